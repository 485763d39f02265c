# Loads the Vagrantfile with a recording stand-in for Vagrant (no Vagrant, no VMs needed) and
# prints, as JSON, what each VM would get: its private networks with their options, its
# provisioners, its provider settings, and the top-level provider settings. lab/tests/vagrant.rs checks this against the topology
# (no stock VM has a path around the gateway).
#   ruby check-vagrantfile.rb VAGRANTFILE
require "json"

# Records every call; nested blocks get their own recorder.
class Recorder
  attr_reader :calls

  def initialize
    @calls = []
  end

  def method_missing(name, *args, **kw, &block)
    child = Recorder.new
    block&.call(child)
    @calls << { "call" => name.to_s, "args" => args.map(&:to_s), "options" => kw.transform_keys(&:to_s).transform_values(&:to_s), "inner" => child.calls }
    child
  end

  def respond_to_missing?(*)
    true
  end
end

module Vagrant
  CONFIGS = []
  def self.configure(_version)
    config = Recorder.new
    yield config
    CONFIGS << config
  end
end

load ARGV.fetch(0)

vms = {}
provider = {}
Vagrant::CONFIGS.each do |config|
  # Top-level provider settings (`lv.x = y` inside `config.vm.provider "libvirt"`).
  config.calls.each do |c|
    next unless c["call"] == "vm"
    c["inner"].each do |p|
      next unless p["call"] == "provider"
      settings = provider[p["args"].first] ||= {}
      p["inner"].each do |x|
        settings[x["call"].chomp("=")] = x["args"].first if x["call"].end_with?("=")
      end
    end
  end
end
Vagrant::CONFIGS.each do |config|
  config.calls.each do |c|
    next unless c["call"] == "vm"
    c["inner"].each do |d|
      next unless d["call"] == "define"
      nets = []
      provision = []
      # This VM's own provider settings (`lv.x = y` inside `node.vm.provider`), over the
      # top-level ones.
      own = Marshal.load(Marshal.dump(provider))
      walk = lambda do |calls|
        calls.each do |x|
          if x["call"] == "network" && x["args"].first == "private_network"
            nets << x["options"]
          elsif x["call"] == "provision"
            provision << x["options"].merge("provisioner" => x["args"].first)
          elsif x["call"] == "provider"
            settings = own[x["args"].first] ||= {}
            x["inner"].each do |y|
              settings[y["call"].chomp("=")] = y["args"].first if y["call"].end_with?("=")
            end
          end
          walk.call(x["inner"])
        end
      end
      walk.call(d["inner"])
      vms[d["args"].first] = { "networks" => nets, "provision" => provision, "provider" => own }
    end
  end
end
puts JSON.pretty_generate({ "vms" => vms, "provider" => provider })
