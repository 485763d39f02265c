# shellcheck shell=bash disable=SC2154,SC2034
# (work, here, vm: set by vagrant/test.sh; vms_with, address_of, on, role_of: vagrant/full.sh)
# The no-bypass attempts on the booted VMs (issue 14), sourced by vagrant/full.sh: from every
# client and service VM, on every NIC it has (Vagrant's own included), nothing reaches a stock
# VM except through the gateway.

# Every address of the stock VMs: their data addresses and their Vagrant NICs'.
stock_addresses() {
  local v
  for v in $(vms_with stock); do
    address_of "$v" stockade-inside
    awk -v h="$v" '$1 == "Host" { cur = $2 } cur == h && $1 == "HostName" { print $2 }' "$work/ssh.cfg"
  done
}

# TCP (API, metrics, SSH), UDP and ICMP from every NIC of every client and service VM to every
# address of the stock VMs: no answer, not even a reset. A service VM's data NIC reaches the
# stock API through the gateway by design (rule service-to-stock-api), so from that NIC only
# the stock VMs' Vagrant addresses are tried.
bypass_attempts() {
  local v nic nics targets specs data_targets vagrant_targets out
  targets=$(stock_addresses | paste -sd, -)
  data_targets=$(for v in $(vms_with stock); do address_of "$v" stockade-inside; done | paste -sd, -)
  vagrant_targets=$(echo "$targets" | tr , '\n' | grep -vxF -f <(echo "$data_targets" | tr , '\n') | paste -sd, -)
  for v in $(vms_with client) $(vms_with service); do
    vm=$v
    on "$v" "cat > /tmp/stockade-probe.py" <"$here/probe.py"
    nics=$(on "$v" "ls /sys/class/net") || fail "cannot list the NICs"
    specs=()
    for nic in $nics; do
      [ "$nic" = lo ] && continue
      if [ "$(role_of "$v")" = service ] && [ "$nic" = data ]; then
        specs+=("$nic:$vagrant_targets")
      else
        specs+=("$nic:$targets")
      fi
    done
    if ! out=$(on "$v" "sudo python3 /tmp/stockade-probe.py reach ${specs[*]}" 2>&1); then
      echo "$out" | grep -E ': (reached|refused|reply)$' >&2 || echo "$out" >&2
      fail "a stock VM answered an attempt that did not go through the gateway"
    fi
    echo "$out" >>"$work/bypass.log"
    log "$v: $(echo "$out" | tail -n 1) (NICs: $(echo "$nics" | grep -vx lo | paste -sd' ' -); every address of the stock VMs)"
  done
}

# Payload forged into client 1's own push connection, held open, sent out of every NIC of
# client 1 with the connection's tuple and sequence numbers. Evidence that none of it reaches
# the stock server: tcpdump on every NIC of the stock VM sees none of the forged segments, and
# the push socket's bytes_received stays 0 (`ss -tin`; the stock server never reads it).
forge_into_push() {
  local home=/var/lib/stockade-forge env rmem tuple n push_sock stock_mac stock stock_ip eph snd rcv nic stock_nics seen bytes
  vm=client1
  env="STOCKADE_HOME=$home STOCKADE_SERVICE=https://198.51.100.110:8443 STOCKADE_CA=/etc/stockade/pki/ca.pem STOCKADE_BIND=198.51.100.101 STOCKADE_PASSPHRASE=forge RUST_LOG=warn"
  # An object larger than what the stock server's send buffer and client 1's receive window
  # hold (the window kept small for this: tcp_rmem at most 64 KiB), so that the push stays
  # open while the client is stopped: 6.75 MB of noise (a PNG that does not compress).
  on client1 "cat > /tmp/stockade-probe.py" <"$here/probe.py"
  # (A download an earlier attempt held, if any, lets go of the push port first.)
  on client1 "sudo pkill -CONT -f '[s]tockade download big.png'; sudo pkill -f '[s]tockade download big.png'; sudo rm -rf $home && sudo mkdir -p $home && sudo chmod 0700 $home" || fail "client home"
  on client1 "sudo python3 - $home/big.png" <<'EOF' || fail "making a large image"
import os, struct, sys, zlib
w, h = 1500, 1500
raw = b"".join(b"\0" + os.urandom(w * 3) for _ in range(h))
def chunk(t, d):
    return struct.pack("!I", len(d)) + t + d + struct.pack("!I", zlib.crc32(t + d) & 0xffffffff)
png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack("!IIBBBBB", w, h, 8, 2, 0, 0, 0)) + chunk(b"IDAT", zlib.compress(raw, 0)) + chunk(b"IEND", b"")
open(sys.argv[1], "wb").write(png)
EOF
  # (The server password it prints is kept out of the log.)
  on client1 "sudo env $env sh -c 'cd $home && stockade keygen --bits 2048 && stockade register && stockade upload big.png --wait 900'" 2>&1 |
    grep -v '^server password:' >"$work/forge-upload.log" ||
    { tail -n 5 "$work/forge-upload.log" >&2; fail "the large upload failed"; }
  # The download, stopped (SIGSTOP) as soon as the push connection is established: the stock
  # server's write then blocks on a full window, and the connection stays open.
  rmem=$(on client1 "cat /proc/sys/net/ipv4/tcp_rmem")
  on client1 "sudo sysctl -q -w net.ipv4.tcp_rmem='4096 16384 65536'"
  on client1 "cat > /tmp/stockade-hold.sh" <<EOF
cd $home
stockade download big.png --out $home/back.png --timeout 900 >$home/download.log 2>&1 &
pid=\$!
for _ in \$(seq 6000); do
  if ss -Htn state established '( sport = :7137 )' | grep -q .; then
    kill -STOP \$pid
    echo "stopped \$pid"
    exit 0
  fi
  kill -0 \$pid 2>/dev/null || { echo "the download ended before the push was held"; cat $home/download.log; exit 1; }
  sleep 0.02
done
exit 1
EOF
  # Client 1 captures its own push connection: the sequence numbers come from it.
  on client1 "sudo sh -c 'rm -f /tmp/push.pcap; timeout 900 tcpdump -i data -nn -U -w /tmp/push.pcap tcp port 7137 >/dev/null 2>&1 &'"
  sleep 3
  on client1 "sudo env $env bash /tmp/stockade-hold.sh" >"$work/forge-hold.log" 2>&1 ||
    fail "the push connection was not held open: $(tail -n 3 "$work/forge-hold.log")"
  sleep 3
  tuple=$(on client1 "sudo python3 /tmp/stockade-probe.py seq /tmp/push.pcap 7137") || fail "cannot read the push connection's sequence numbers"
  # tuple: LOCAL:7137 STOCK:EPH SND RCV
  stock_ip=$(echo "$tuple" | awk '{split($2, a, ":"); print a[1]}')
  eph=$(echo "$tuple" | awk '{split($2, a, ":"); print a[2]}')
  snd=$(echo "$tuple" | awk '{print $3}')
  rcv=$(echo "$tuple" | awk '{print $4}')
  stock=""
  for v in $(vms_with stock); do
    [ "$(address_of "$v" stockade-inside)" = "$stock_ip" ] && stock=$v
  done
  [ -n "$stock" ] || fail "the push came from $stock_ip, not a stock VM"
  # The stock VM's data MAC is no secret (the lab derives it from the address): aim at it too.
  stock_mac=$(python3 -c 'import json,sys; t=json.load(open(sys.argv[1])); print(next(n["mac"] for v in t["vms"] if v["name"]==sys.argv[2] for n in v["nics"] if n["network"]=="stockade-inside"))' "$topo" "$stock")
  vm=$stock
  # tcpdump on every NIC of the stock VM, for the forged payload's tuple.
  stock_nics=$(on "$stock" "ls /sys/class/net" | grep -vx lo)
  for nic in $stock_nics; do
    on "$stock" "sudo sh -c 'timeout 40 tcpdump -i $nic -nn -U -w /tmp/forge-$nic.pcap tcp port 7137 >/dev/null 2>&1 &'"
  done
  sleep 3
  vm=client1
  : >"$work/forge.log"
  for nic in $(on client1 "ls /sys/class/net" | grep -vx lo); do
    on client1 "sudo python3 /tmp/stockade-probe.py forge $nic 198.51.100.101:7137 $stock_ip:$eph $snd $rcv $stock_mac" >>"$work/forge.log" 2>&1 ||
      fail "forging out of $nic failed: $(tail -n 1 "$work/forge.log")"
  done
  sleep 3
  vm=$stock
  seen=0
  for nic in $stock_nics; do
    # grep -c prints 0 (and exits 1) when nothing matches; anything but a number is a failure.
    n=$(on "$stock" "sudo pkill -INT -f '[t]cpdump -i $nic '; sleep 1; sudo tcpdump -nn -A -r /tmp/forge-$nic.pcap 2>/dev/null | grep -c STOCKADE-FORGED" || true)
    case "$n" in '' | *[!0-9]*) fail "cannot read the capture of $stock's $nic: $n" ;; esac
    seen=$((seen + n))
  done
  # ss prints bytes_received only when it is not 0; the push socket itself must be there.
  push_sock=$(on "$stock" "ss -tinH state established '( dport = :7137 )'" || true)
  [ -n "$push_sock" ] || fail "the push connection is gone from $stock: nothing held open to forge into"
  bytes=$(echo "$push_sock" | grep -o 'bytes_received:[0-9]*' | cut -d: -f2 || true)
  on client1 "sudo pkill -CONT -f '[s]tockade download big.png'; sudo pkill -f '[s]tockade download big.png'; sudo pkill -f '[t]cpdump -i data'; sudo sysctl -q -w net.ipv4.tcp_rmem='$rmem'" >/dev/null 2>&1 || true
  [ "$seen" -eq 0 ] || fail "$seen forged segments seen on the NICs of $stock (tcpdump)"
  [ "${bytes:-0}" -eq 0 ] || fail "the push socket on $stock received $bytes bytes"
  log "forged into client 1's push connection ($(echo "$tuple" | awk '{print $1" <- "$2}'), held open): $(grep -c '^forged' "$work/forge.log") NICs of client1, $(grep -o 'forged [0-9]*' "$work/forge.log" | awk '{s += $2} END {print s}') segments; tcpdump on $stock's NICs ($(echo "$stock_nics" | paste -sd' ' -)) saw none; its push socket's bytes_received: ${bytes:-0}"
}

# A stock VM rebooted comes back with its guard active before its daemon starts; then the
# attempts again.
reboot_stock() {
  local back order guard_at stock_at
  on stock1 "sudo systemctl reboot" >/dev/null 2>&1 || true
  sleep 10
  back=false
  for _ in $(seq 180); do
    if on stock1 "systemctl is-active stockade-stock.service" >/dev/null 2>&1; then
      back=true
      break
    fi
    sleep 5
  done
  $back || fail "stock1 did not come back within 15 minutes of its reboot"
  order=$(on stock1 "systemctl show -P ActiveEnterTimestampMonotonic stockade-guard.service; systemctl show -P ExecMainStartTimestampMonotonic stockade-stock.service")
  guard_at=$(echo "$order" | sed -n 1p)
  stock_at=$(echo "$order" | sed -n 2p)
  if [ "${guard_at:-0}" -eq 0 ] || [ "$guard_at" -gt "${stock_at:-0}" ]; then
    fail "after the reboot the guard was active at ${guard_at:-never}, stockade-stock started at ${stock_at:-never} (µs since boot)"
  fi
  on stock1 "sudo nft list table inet stockade_guard" >/dev/null || fail "the guard is not loaded after the reboot"
  log "stock1 rebooted: guard active at $((guard_at / 1000)) ms, stockade-stock started at $((stock_at / 1000)) ms after boot"
  bypass_attempts
}

# The gateway VM rebooted: while it boots, and until its daemon has loaded its rules,
# nothing crosses. Client 1 knocks at stock1's API every 0.3 s throughout (a connection the
# rules refuse), and tcpdump on stock1's data NIC must see none of its packets; once the
# gateway is back, service 1 reaches stock1's API again (the rules admit it).
reboot_gateway() {
  local gw_metrics stock1_ip client1_ip back crossed reached
  gw_metrics="http://$(address_of gateway stockade-mgmt):9464/metrics"
  stock1_ip=$(address_of stock1 stockade-inside)
  client1_ip=$(address_of client1 stockade-outside)
  on stock1 "sudo sh -c 'timeout 1800 tcpdump -i data -nn -U -w /tmp/gw-reboot.pcap ip src host $client1_ip >/dev/null 2>&1 &'"
  on client1 "cat > /tmp/stockade-probe.py" <"$here/probe.py"
  on client1 "sudo sh -c 'timeout 1800 python3 /tmp/stockade-probe.py knock data $stock1_ip 7443 1800 >/tmp/knock.log 2>&1 &'"
  sleep 5
  on gateway "sudo systemctl reboot" >/dev/null 2>&1 || true
  sleep 10
  back=false
  for _ in $(seq 180); do
    if curl -sS --max-time 5 "$gw_metrics" 2>/dev/null | grep -q '^stockade_gateway_'; then
      back=true
      break
    fi
    sleep 5
  done
  $back || fail "the gateway VM did not serve its metrics within 15 minutes of its reboot"
  sleep 5
  on client1 "sudo pkill -TERM -f '[s]tockade-probe.py knock'; sleep 1; cat /tmp/knock.log" >"$work/knock.log" 2>&1 || true
  vm=stock1
  crossed=$(on stock1 "sudo pkill -INT -f '[t]cpdump -i data'; sleep 1; sudo tcpdump -nn -r /tmp/gw-reboot.pcap 2>/dev/null | wc -l")
  [ "${crossed:-1}" -eq 0 ] || fail "$crossed packets of client 1 crossed to stock1 while the gateway VM rebooted"
  vm=service1
  reached=$(on service1 "/usr/local/bin/stockade-lab probe tcp $stock1_ip:7443 --timeout 10" 2>&1 || true)
  case "$reached" in reached*) ;; *) fail "after the gateway's reboot, service 1 does not reach stock1's API: $reached" ;; esac
}
