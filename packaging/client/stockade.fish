# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_stockade_global_optspecs
    string join \n log-format= home= service= ca= bind= key= passphrase-file= h/help V/version
end

function __fish_stockade_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_stockade_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_stockade_using_subcommand
    set -l cmd (__fish_stockade_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c stockade -n "__fish_stockade_needs_command" -l log-format -d 'Log format on stderr: text (colour only on a terminal) or json (one object per line)' -r -f -a "text\t'Human-readable lines; colour only on a terminal'
json\t'One JSON object per line'"
complete -c stockade -n "__fish_stockade_needs_command" -l home -d 'The client\'s home directory (state and, by default, the key) [default: ~/.stockade]' -r -F
complete -c stockade -n "__fish_stockade_needs_command" -l service -d 'The service server\'s base URL, e.g. https://198.51.100.110:8443' -r
complete -c stockade -n "__fish_stockade_needs_command" -l ca -d 'The CA certificate (PEM) the service\'s certificate is pinned to' -r -F
complete -c stockade -n "__fish_stockade_needs_command" -l bind -d 'Source address for connections to the service, and the address the push listener binds' -r
complete -c stockade -n "__fish_stockade_needs_command" -l key -d 'The encrypted private key; any path, e.g. on removable media [default: HOME/client.key]' -r -F
complete -c stockade -n "__fish_stockade_needs_command" -l passphrase-file -d 'File holding the key passphrase (otherwise the STOCKADE_PASSPHRASE variable)' -r -F
complete -c stockade -n "__fish_stockade_needs_command" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c stockade -n "__fish_stockade_needs_command" -s V -l version -d 'Print version'
complete -c stockade -n "__fish_stockade_needs_command" -f -a "keygen" -d 'Generate the client\'s RSA key, encrypted under the passphrase (mode 0600; never overwrites)'
complete -c stockade -n "__fish_stockade_needs_command" -f -a "register" -d 'Register the client\'s public key with the service (61, 71)'
complete -c stockade -n "__fish_stockade_needs_command" -f -a "upload" -d 'Upload a file for review and storage (62, 63; re-upload 101, 104, 105)'
complete -c stockade -n "__fish_stockade_needs_command" -f -a "status" -d 'Show, or wait for, the outcome of an upload (64-66)'
complete -c stockade -n "__fish_stockade_needs_command" -f -a "download" -d 'Download a stored file: the stock server pushes it to BIND:7137 (121, 137, 124, 125)'
complete -c stockade -n "__fish_stockade_needs_command" -f -a "list" -d 'List the stored files of the account'
complete -c stockade -n "__fish_stockade_needs_command" -f -a "delete" -d 'Delete a stored file (owner only, signed request)'
complete -c stockade -n "__fish_stockade_needs_command" -f -a "password" -d 'Server password actions'
complete -c stockade -n "__fish_stockade_needs_command" -f -a "share" -d 'Share the account key with another client, directly (Fig. 10, 11)'
complete -c stockade -n "__fish_stockade_needs_command" -f -a "thumbs" -d 'Reduced images kept by the service (claims 6, 14)'
complete -c stockade -n "__fish_stockade_needs_command" -f -a "templates" -d 'Templates for composition (claims 7, 15)'
complete -c stockade -n "__fish_stockade_needs_command" -f -a "completions" -d 'Print a shell completion script (the Debian package installs bash, zsh and fish ones)'
complete -c stockade -n "__fish_stockade_needs_command" -f -a "man" -d 'Print the manual page (roff; the package installs it as stockade(1))'
complete -c stockade -n "__fish_stockade_needs_command" -f -a "compose" -d 'Compose a stored image into a template\'s slot (Fig. 12): a preview from reduced images, or the full-resolution result from what the stock server(s) push'
complete -c stockade -n "__fish_stockade_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c stockade -n "__fish_stockade_using_subcommand keygen" -l bits -r
complete -c stockade -n "__fish_stockade_using_subcommand keygen" -l log-format -d 'Log format on stderr: text (colour only on a terminal) or json (one object per line)' -r -f -a "text\t'Human-readable lines; colour only on a terminal'
json\t'One JSON object per line'"
complete -c stockade -n "__fish_stockade_using_subcommand keygen" -l home -d 'The client\'s home directory (state and, by default, the key) [default: ~/.stockade]' -r -F
complete -c stockade -n "__fish_stockade_using_subcommand keygen" -l service -d 'The service server\'s base URL, e.g. https://198.51.100.110:8443' -r
complete -c stockade -n "__fish_stockade_using_subcommand keygen" -l ca -d 'The CA certificate (PEM) the service\'s certificate is pinned to' -r -F
complete -c stockade -n "__fish_stockade_using_subcommand keygen" -l bind -d 'Source address for connections to the service, and the address the push listener binds' -r
complete -c stockade -n "__fish_stockade_using_subcommand keygen" -l key -d 'The encrypted private key; any path, e.g. on removable media [default: HOME/client.key]' -r -F
complete -c stockade -n "__fish_stockade_using_subcommand keygen" -l passphrase-file -d 'File holding the key passphrase (otherwise the STOCKADE_PASSPHRASE variable)' -r -F
complete -c stockade -n "__fish_stockade_using_subcommand keygen" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c stockade -n "__fish_stockade_using_subcommand register" -l log-format -d 'Log format on stderr: text (colour only on a terminal) or json (one object per line)' -r -f -a "text\t'Human-readable lines; colour only on a terminal'
json\t'One JSON object per line'"
complete -c stockade -n "__fish_stockade_using_subcommand register" -l home -d 'The client\'s home directory (state and, by default, the key) [default: ~/.stockade]' -r -F
complete -c stockade -n "__fish_stockade_using_subcommand register" -l service -d 'The service server\'s base URL, e.g. https://198.51.100.110:8443' -r
complete -c stockade -n "__fish_stockade_using_subcommand register" -l ca -d 'The CA certificate (PEM) the service\'s certificate is pinned to' -r -F
complete -c stockade -n "__fish_stockade_using_subcommand register" -l bind -d 'Source address for connections to the service, and the address the push listener binds' -r
complete -c stockade -n "__fish_stockade_using_subcommand register" -l key -d 'The encrypted private key; any path, e.g. on removable media [default: HOME/client.key]' -r -F
complete -c stockade -n "__fish_stockade_using_subcommand register" -l passphrase-file -d 'File holding the key passphrase (otherwise the STOCKADE_PASSPHRASE variable)' -r -F
complete -c stockade -n "__fish_stockade_using_subcommand register" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c stockade -n "__fish_stockade_using_subcommand upload" -l name -d 'Name to store it under [default: the file\'s name]' -r
complete -c stockade -n "__fish_stockade_using_subcommand upload" -l wait -d 'Seconds to wait for the review before returning (exit 4)' -r
complete -c stockade -n "__fish_stockade_using_subcommand upload" -l log-format -d 'Log format on stderr: text (colour only on a terminal) or json (one object per line)' -r -f -a "text\t'Human-readable lines; colour only on a terminal'
json\t'One JSON object per line'"
complete -c stockade -n "__fish_stockade_using_subcommand upload" -l home -d 'The client\'s home directory (state and, by default, the key) [default: ~/.stockade]' -r -F
complete -c stockade -n "__fish_stockade_using_subcommand upload" -l service -d 'The service server\'s base URL, e.g. https://198.51.100.110:8443' -r
complete -c stockade -n "__fish_stockade_using_subcommand upload" -l ca -d 'The CA certificate (PEM) the service\'s certificate is pinned to' -r -F
complete -c stockade -n "__fish_stockade_using_subcommand upload" -l bind -d 'Source address for connections to the service, and the address the push listener binds' -r
complete -c stockade -n "__fish_stockade_using_subcommand upload" -l key -d 'The encrypted private key; any path, e.g. on removable media [default: HOME/client.key]' -r -F
complete -c stockade -n "__fish_stockade_using_subcommand upload" -l passphrase-file -d 'File holding the key passphrase (otherwise the STOCKADE_PASSPHRASE variable)' -r -F
complete -c stockade -n "__fish_stockade_using_subcommand upload" -l remove-source -d 'Delete the local file once it is stored and the keys are kept (0059)'
complete -c stockade -n "__fish_stockade_using_subcommand upload" -l force -d 'With --remove-source: delete even if the file changed since it was uploaded'
complete -c stockade -n "__fish_stockade_using_subcommand upload" -l private-thumbnail -d 'Keep the reduced image private: only requests with this account\'s server password see it (claim 6; public by default)'
complete -c stockade -n "__fish_stockade_using_subcommand upload" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c stockade -n "__fish_stockade_using_subcommand status" -l wait -r
complete -c stockade -n "__fish_stockade_using_subcommand status" -l log-format -d 'Log format on stderr: text (colour only on a terminal) or json (one object per line)' -r -f -a "text\t'Human-readable lines; colour only on a terminal'
json\t'One JSON object per line'"
complete -c stockade -n "__fish_stockade_using_subcommand status" -l home -d 'The client\'s home directory (state and, by default, the key) [default: ~/.stockade]' -r -F
complete -c stockade -n "__fish_stockade_using_subcommand status" -l service -d 'The service server\'s base URL, e.g. https://198.51.100.110:8443' -r
complete -c stockade -n "__fish_stockade_using_subcommand status" -l ca -d 'The CA certificate (PEM) the service\'s certificate is pinned to' -r -F
complete -c stockade -n "__fish_stockade_using_subcommand status" -l bind -d 'Source address for connections to the service, and the address the push listener binds' -r
complete -c stockade -n "__fish_stockade_using_subcommand status" -l key -d 'The encrypted private key; any path, e.g. on removable media [default: HOME/client.key]' -r -F
complete -c stockade -n "__fish_stockade_using_subcommand status" -l passphrase-file -d 'File holding the key passphrase (otherwise the STOCKADE_PASSPHRASE variable)' -r -F
complete -c stockade -n "__fish_stockade_using_subcommand status" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c stockade -n "__fish_stockade_using_subcommand download" -l out -r -F
complete -c stockade -n "__fish_stockade_using_subcommand download" -l timeout -d 'Seconds to wait for the push' -r
complete -c stockade -n "__fish_stockade_using_subcommand download" -l log-format -d 'Log format on stderr: text (colour only on a terminal) or json (one object per line)' -r -f -a "text\t'Human-readable lines; colour only on a terminal'
json\t'One JSON object per line'"
complete -c stockade -n "__fish_stockade_using_subcommand download" -l home -d 'The client\'s home directory (state and, by default, the key) [default: ~/.stockade]' -r -F
complete -c stockade -n "__fish_stockade_using_subcommand download" -l service -d 'The service server\'s base URL, e.g. https://198.51.100.110:8443' -r
complete -c stockade -n "__fish_stockade_using_subcommand download" -l ca -d 'The CA certificate (PEM) the service\'s certificate is pinned to' -r -F
complete -c stockade -n "__fish_stockade_using_subcommand download" -l bind -d 'Source address for connections to the service, and the address the push listener binds' -r
complete -c stockade -n "__fish_stockade_using_subcommand download" -l key -d 'The encrypted private key; any path, e.g. on removable media [default: HOME/client.key]' -r -F
complete -c stockade -n "__fish_stockade_using_subcommand download" -l passphrase-file -d 'File holding the key passphrase (otherwise the STOCKADE_PASSPHRASE variable)' -r -F
complete -c stockade -n "__fish_stockade_using_subcommand download" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c stockade -n "__fish_stockade_using_subcommand list" -l log-format -d 'Log format on stderr: text (colour only on a terminal) or json (one object per line)' -r -f -a "text\t'Human-readable lines; colour only on a terminal'
json\t'One JSON object per line'"
complete -c stockade -n "__fish_stockade_using_subcommand list" -l home -d 'The client\'s home directory (state and, by default, the key) [default: ~/.stockade]' -r -F
complete -c stockade -n "__fish_stockade_using_subcommand list" -l service -d 'The service server\'s base URL, e.g. https://198.51.100.110:8443' -r
complete -c stockade -n "__fish_stockade_using_subcommand list" -l ca -d 'The CA certificate (PEM) the service\'s certificate is pinned to' -r -F
complete -c stockade -n "__fish_stockade_using_subcommand list" -l bind -d 'Source address for connections to the service, and the address the push listener binds' -r
complete -c stockade -n "__fish_stockade_using_subcommand list" -l key -d 'The encrypted private key; any path, e.g. on removable media [default: HOME/client.key]' -r -F
complete -c stockade -n "__fish_stockade_using_subcommand list" -l passphrase-file -d 'File holding the key passphrase (otherwise the STOCKADE_PASSPHRASE variable)' -r -F
complete -c stockade -n "__fish_stockade_using_subcommand list" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c stockade -n "__fish_stockade_using_subcommand delete" -l log-format -d 'Log format on stderr: text (colour only on a terminal) or json (one object per line)' -r -f -a "text\t'Human-readable lines; colour only on a terminal'
json\t'One JSON object per line'"
complete -c stockade -n "__fish_stockade_using_subcommand delete" -l home -d 'The client\'s home directory (state and, by default, the key) [default: ~/.stockade]' -r -F
complete -c stockade -n "__fish_stockade_using_subcommand delete" -l service -d 'The service server\'s base URL, e.g. https://198.51.100.110:8443' -r
complete -c stockade -n "__fish_stockade_using_subcommand delete" -l ca -d 'The CA certificate (PEM) the service\'s certificate is pinned to' -r -F
complete -c stockade -n "__fish_stockade_using_subcommand delete" -l bind -d 'Source address for connections to the service, and the address the push listener binds' -r
complete -c stockade -n "__fish_stockade_using_subcommand delete" -l key -d 'The encrypted private key; any path, e.g. on removable media [default: HOME/client.key]' -r -F
complete -c stockade -n "__fish_stockade_using_subcommand delete" -l passphrase-file -d 'File holding the key passphrase (otherwise the STOCKADE_PASSPHRASE variable)' -r -F
complete -c stockade -n "__fish_stockade_using_subcommand delete" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c stockade -n "__fish_stockade_using_subcommand password; and not __fish_seen_subcommand_from show rotate help" -l log-format -d 'Log format on stderr: text (colour only on a terminal) or json (one object per line)' -r -f -a "text\t'Human-readable lines; colour only on a terminal'
json\t'One JSON object per line'"
complete -c stockade -n "__fish_stockade_using_subcommand password; and not __fish_seen_subcommand_from show rotate help" -l home -d 'The client\'s home directory (state and, by default, the key) [default: ~/.stockade]' -r -F
complete -c stockade -n "__fish_stockade_using_subcommand password; and not __fish_seen_subcommand_from show rotate help" -l service -d 'The service server\'s base URL, e.g. https://198.51.100.110:8443' -r
complete -c stockade -n "__fish_stockade_using_subcommand password; and not __fish_seen_subcommand_from show rotate help" -l ca -d 'The CA certificate (PEM) the service\'s certificate is pinned to' -r -F
complete -c stockade -n "__fish_stockade_using_subcommand password; and not __fish_seen_subcommand_from show rotate help" -l bind -d 'Source address for connections to the service, and the address the push listener binds' -r
complete -c stockade -n "__fish_stockade_using_subcommand password; and not __fish_seen_subcommand_from show rotate help" -l key -d 'The encrypted private key; any path, e.g. on removable media [default: HOME/client.key]' -r -F
complete -c stockade -n "__fish_stockade_using_subcommand password; and not __fish_seen_subcommand_from show rotate help" -l passphrase-file -d 'File holding the key passphrase (otherwise the STOCKADE_PASSPHRASE variable)' -r -F
complete -c stockade -n "__fish_stockade_using_subcommand password; and not __fish_seen_subcommand_from show rotate help" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c stockade -n "__fish_stockade_using_subcommand password; and not __fish_seen_subcommand_from show rotate help" -f -a "show" -d 'Print the server password (to hand to another client beforehand, 0078)'
complete -c stockade -n "__fish_stockade_using_subcommand password; and not __fish_seen_subcommand_from show rotate help" -f -a "rotate" -d 'Replace the server password (79-82); the old one stops working'
complete -c stockade -n "__fish_stockade_using_subcommand password; and not __fish_seen_subcommand_from show rotate help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c stockade -n "__fish_stockade_using_subcommand password; and __fish_seen_subcommand_from show" -l log-format -d 'Log format on stderr: text (colour only on a terminal) or json (one object per line)' -r -f -a "text\t'Human-readable lines; colour only on a terminal'
json\t'One JSON object per line'"
complete -c stockade -n "__fish_stockade_using_subcommand password; and __fish_seen_subcommand_from show" -l home -d 'The client\'s home directory (state and, by default, the key) [default: ~/.stockade]' -r -F
complete -c stockade -n "__fish_stockade_using_subcommand password; and __fish_seen_subcommand_from show" -l service -d 'The service server\'s base URL, e.g. https://198.51.100.110:8443' -r
complete -c stockade -n "__fish_stockade_using_subcommand password; and __fish_seen_subcommand_from show" -l ca -d 'The CA certificate (PEM) the service\'s certificate is pinned to' -r -F
complete -c stockade -n "__fish_stockade_using_subcommand password; and __fish_seen_subcommand_from show" -l bind -d 'Source address for connections to the service, and the address the push listener binds' -r
complete -c stockade -n "__fish_stockade_using_subcommand password; and __fish_seen_subcommand_from show" -l key -d 'The encrypted private key; any path, e.g. on removable media [default: HOME/client.key]' -r -F
complete -c stockade -n "__fish_stockade_using_subcommand password; and __fish_seen_subcommand_from show" -l passphrase-file -d 'File holding the key passphrase (otherwise the STOCKADE_PASSPHRASE variable)' -r -F
complete -c stockade -n "__fish_stockade_using_subcommand password; and __fish_seen_subcommand_from show" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c stockade -n "__fish_stockade_using_subcommand password; and __fish_seen_subcommand_from rotate" -l log-format -d 'Log format on stderr: text (colour only on a terminal) or json (one object per line)' -r -f -a "text\t'Human-readable lines; colour only on a terminal'
json\t'One JSON object per line'"
complete -c stockade -n "__fish_stockade_using_subcommand password; and __fish_seen_subcommand_from rotate" -l home -d 'The client\'s home directory (state and, by default, the key) [default: ~/.stockade]' -r -F
complete -c stockade -n "__fish_stockade_using_subcommand password; and __fish_seen_subcommand_from rotate" -l service -d 'The service server\'s base URL, e.g. https://198.51.100.110:8443' -r
complete -c stockade -n "__fish_stockade_using_subcommand password; and __fish_seen_subcommand_from rotate" -l ca -d 'The CA certificate (PEM) the service\'s certificate is pinned to' -r -F
complete -c stockade -n "__fish_stockade_using_subcommand password; and __fish_seen_subcommand_from rotate" -l bind -d 'Source address for connections to the service, and the address the push listener binds' -r
complete -c stockade -n "__fish_stockade_using_subcommand password; and __fish_seen_subcommand_from rotate" -l key -d 'The encrypted private key; any path, e.g. on removable media [default: HOME/client.key]' -r -F
complete -c stockade -n "__fish_stockade_using_subcommand password; and __fish_seen_subcommand_from rotate" -l passphrase-file -d 'File holding the key passphrase (otherwise the STOCKADE_PASSPHRASE variable)' -r -F
complete -c stockade -n "__fish_stockade_using_subcommand password; and __fish_seen_subcommand_from rotate" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c stockade -n "__fish_stockade_using_subcommand password; and __fish_seen_subcommand_from help" -f -a "show" -d 'Print the server password (to hand to another client beforehand, 0078)'
complete -c stockade -n "__fish_stockade_using_subcommand password; and __fish_seen_subcommand_from help" -f -a "rotate" -d 'Replace the server password (79-82); the old one stops working'
complete -c stockade -n "__fish_stockade_using_subcommand password; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c stockade -n "__fish_stockade_using_subcommand share; and not __fish_seen_subcommand_from serve request help" -l log-format -d 'Log format on stderr: text (colour only on a terminal) or json (one object per line)' -r -f -a "text\t'Human-readable lines; colour only on a terminal'
json\t'One JSON object per line'"
complete -c stockade -n "__fish_stockade_using_subcommand share; and not __fish_seen_subcommand_from serve request help" -l home -d 'The client\'s home directory (state and, by default, the key) [default: ~/.stockade]' -r -F
complete -c stockade -n "__fish_stockade_using_subcommand share; and not __fish_seen_subcommand_from serve request help" -l service -d 'The service server\'s base URL, e.g. https://198.51.100.110:8443' -r
complete -c stockade -n "__fish_stockade_using_subcommand share; and not __fish_seen_subcommand_from serve request help" -l ca -d 'The CA certificate (PEM) the service\'s certificate is pinned to' -r -F
complete -c stockade -n "__fish_stockade_using_subcommand share; and not __fish_seen_subcommand_from serve request help" -l bind -d 'Source address for connections to the service, and the address the push listener binds' -r
complete -c stockade -n "__fish_stockade_using_subcommand share; and not __fish_seen_subcommand_from serve request help" -l key -d 'The encrypted private key; any path, e.g. on removable media [default: HOME/client.key]' -r -F
complete -c stockade -n "__fish_stockade_using_subcommand share; and not __fish_seen_subcommand_from serve request help" -l passphrase-file -d 'File holding the key passphrase (otherwise the STOCKADE_PASSPHRASE variable)' -r -F
complete -c stockade -n "__fish_stockade_using_subcommand share; and not __fish_seen_subcommand_from serve request help" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c stockade -n "__fish_stockade_using_subcommand share; and not __fish_seen_subcommand_from serve request help" -f -a "serve" -d 'Client 1: hand the account key to a client that proves the client password (141-147)'
complete -c stockade -n "__fish_stockade_using_subcommand share; and not __fish_seen_subcommand_from serve request help" -f -a "request" -d 'Client 30: ask client 1 for the account key (151-156)'
complete -c stockade -n "__fish_stockade_using_subcommand share; and not __fish_seen_subcommand_from serve request help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c stockade -n "__fish_stockade_using_subcommand share; and __fish_seen_subcommand_from serve" -l client-password-file -d 'File holding the client password agreed with client 30 beforehand (0078)' -r -F
complete -c stockade -n "__fish_stockade_using_subcommand share; and __fish_seen_subcommand_from serve" -l listen -d 'Address to listen on [default: BIND:7138]' -r
complete -c stockade -n "__fish_stockade_using_subcommand share; and __fish_seen_subcommand_from serve" -l max-attempts -d 'Stop after this many failed attempts' -r
complete -c stockade -n "__fish_stockade_using_subcommand share; and __fish_seen_subcommand_from serve" -l log-format -d 'Log format on stderr: text (colour only on a terminal) or json (one object per line)' -r -f -a "text\t'Human-readable lines; colour only on a terminal'
json\t'One JSON object per line'"
complete -c stockade -n "__fish_stockade_using_subcommand share; and __fish_seen_subcommand_from serve" -l home -d 'The client\'s home directory (state and, by default, the key) [default: ~/.stockade]' -r -F
complete -c stockade -n "__fish_stockade_using_subcommand share; and __fish_seen_subcommand_from serve" -l service -d 'The service server\'s base URL, e.g. https://198.51.100.110:8443' -r
complete -c stockade -n "__fish_stockade_using_subcommand share; and __fish_seen_subcommand_from serve" -l ca -d 'The CA certificate (PEM) the service\'s certificate is pinned to' -r -F
complete -c stockade -n "__fish_stockade_using_subcommand share; and __fish_seen_subcommand_from serve" -l bind -d 'Source address for connections to the service, and the address the push listener binds' -r
complete -c stockade -n "__fish_stockade_using_subcommand share; and __fish_seen_subcommand_from serve" -l key -d 'The encrypted private key; any path, e.g. on removable media [default: HOME/client.key]' -r -F
complete -c stockade -n "__fish_stockade_using_subcommand share; and __fish_seen_subcommand_from serve" -l passphrase-file -d 'File holding the key passphrase (otherwise the STOCKADE_PASSPHRASE variable)' -r -F
complete -c stockade -n "__fish_stockade_using_subcommand share; and __fish_seen_subcommand_from serve" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c stockade -n "__fish_stockade_using_subcommand share; and __fish_seen_subcommand_from request" -l from -d 'Client 1\'s share address, HOST:PORT (port 7138 when omitted)' -r
complete -c stockade -n "__fish_stockade_using_subcommand share; and __fish_seen_subcommand_from request" -l client-password-file -d 'File holding the client password client 1 gave us (0078)' -r -F
complete -c stockade -n "__fish_stockade_using_subcommand share; and __fish_seen_subcommand_from request" -l server-password-file -d 'File holding the server password client 1 gave us (0078)' -r -F
complete -c stockade -n "__fish_stockade_using_subcommand share; and __fish_seen_subcommand_from request" -l log-format -d 'Log format on stderr: text (colour only on a terminal) or json (one object per line)' -r -f -a "text\t'Human-readable lines; colour only on a terminal'
json\t'One JSON object per line'"
complete -c stockade -n "__fish_stockade_using_subcommand share; and __fish_seen_subcommand_from request" -l home -d 'The client\'s home directory (state and, by default, the key) [default: ~/.stockade]' -r -F
complete -c stockade -n "__fish_stockade_using_subcommand share; and __fish_seen_subcommand_from request" -l service -d 'The service server\'s base URL, e.g. https://198.51.100.110:8443' -r
complete -c stockade -n "__fish_stockade_using_subcommand share; and __fish_seen_subcommand_from request" -l ca -d 'The CA certificate (PEM) the service\'s certificate is pinned to' -r -F
complete -c stockade -n "__fish_stockade_using_subcommand share; and __fish_seen_subcommand_from request" -l bind -d 'Source address for connections to the service, and the address the push listener binds' -r
complete -c stockade -n "__fish_stockade_using_subcommand share; and __fish_seen_subcommand_from request" -l key -d 'The encrypted private key; any path, e.g. on removable media [default: HOME/client.key]' -r -F
complete -c stockade -n "__fish_stockade_using_subcommand share; and __fish_seen_subcommand_from request" -l passphrase-file -d 'File holding the key passphrase (otherwise the STOCKADE_PASSPHRASE variable)' -r -F
complete -c stockade -n "__fish_stockade_using_subcommand share; and __fish_seen_subcommand_from request" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c stockade -n "__fish_stockade_using_subcommand share; and __fish_seen_subcommand_from help" -f -a "serve" -d 'Client 1: hand the account key to a client that proves the client password (141-147)'
complete -c stockade -n "__fish_stockade_using_subcommand share; and __fish_seen_subcommand_from help" -f -a "request" -d 'Client 30: ask client 1 for the account key (151-156)'
complete -c stockade -n "__fish_stockade_using_subcommand share; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c stockade -n "__fish_stockade_using_subcommand thumbs; and not __fish_seen_subcommand_from list get help" -l log-format -d 'Log format on stderr: text (colour only on a terminal) or json (one object per line)' -r -f -a "text\t'Human-readable lines; colour only on a terminal'
json\t'One JSON object per line'"
complete -c stockade -n "__fish_stockade_using_subcommand thumbs; and not __fish_seen_subcommand_from list get help" -l home -d 'The client\'s home directory (state and, by default, the key) [default: ~/.stockade]' -r -F
complete -c stockade -n "__fish_stockade_using_subcommand thumbs; and not __fish_seen_subcommand_from list get help" -l service -d 'The service server\'s base URL, e.g. https://198.51.100.110:8443' -r
complete -c stockade -n "__fish_stockade_using_subcommand thumbs; and not __fish_seen_subcommand_from list get help" -l ca -d 'The CA certificate (PEM) the service\'s certificate is pinned to' -r -F
complete -c stockade -n "__fish_stockade_using_subcommand thumbs; and not __fish_seen_subcommand_from list get help" -l bind -d 'Source address for connections to the service, and the address the push listener binds' -r
complete -c stockade -n "__fish_stockade_using_subcommand thumbs; and not __fish_seen_subcommand_from list get help" -l key -d 'The encrypted private key; any path, e.g. on removable media [default: HOME/client.key]' -r -F
complete -c stockade -n "__fish_stockade_using_subcommand thumbs; and not __fish_seen_subcommand_from list get help" -l passphrase-file -d 'File holding the key passphrase (otherwise the STOCKADE_PASSPHRASE variable)' -r -F
complete -c stockade -n "__fish_stockade_using_subcommand thumbs; and not __fish_seen_subcommand_from list get help" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c stockade -n "__fish_stockade_using_subcommand thumbs; and not __fish_seen_subcommand_from list get help" -f -a "list" -d 'The reduced images this client may see: public ones and its account\'s'
complete -c stockade -n "__fish_stockade_using_subcommand thumbs; and not __fish_seen_subcommand_from list get help" -f -a "get" -d 'Fetch one reduced image by id, or by name (this account\'s first, then a unique public one)'
complete -c stockade -n "__fish_stockade_using_subcommand thumbs; and not __fish_seen_subcommand_from list get help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c stockade -n "__fish_stockade_using_subcommand thumbs; and __fish_seen_subcommand_from list" -l log-format -d 'Log format on stderr: text (colour only on a terminal) or json (one object per line)' -r -f -a "text\t'Human-readable lines; colour only on a terminal'
json\t'One JSON object per line'"
complete -c stockade -n "__fish_stockade_using_subcommand thumbs; and __fish_seen_subcommand_from list" -l home -d 'The client\'s home directory (state and, by default, the key) [default: ~/.stockade]' -r -F
complete -c stockade -n "__fish_stockade_using_subcommand thumbs; and __fish_seen_subcommand_from list" -l service -d 'The service server\'s base URL, e.g. https://198.51.100.110:8443' -r
complete -c stockade -n "__fish_stockade_using_subcommand thumbs; and __fish_seen_subcommand_from list" -l ca -d 'The CA certificate (PEM) the service\'s certificate is pinned to' -r -F
complete -c stockade -n "__fish_stockade_using_subcommand thumbs; and __fish_seen_subcommand_from list" -l bind -d 'Source address for connections to the service, and the address the push listener binds' -r
complete -c stockade -n "__fish_stockade_using_subcommand thumbs; and __fish_seen_subcommand_from list" -l key -d 'The encrypted private key; any path, e.g. on removable media [default: HOME/client.key]' -r -F
complete -c stockade -n "__fish_stockade_using_subcommand thumbs; and __fish_seen_subcommand_from list" -l passphrase-file -d 'File holding the key passphrase (otherwise the STOCKADE_PASSPHRASE variable)' -r -F
complete -c stockade -n "__fish_stockade_using_subcommand thumbs; and __fish_seen_subcommand_from list" -l account -d 'Only this account\'s (needs its server password)'
complete -c stockade -n "__fish_stockade_using_subcommand thumbs; and __fish_seen_subcommand_from list" -l public -d 'Only public ones'
complete -c stockade -n "__fish_stockade_using_subcommand thumbs; and __fish_seen_subcommand_from list" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c stockade -n "__fish_stockade_using_subcommand thumbs; and __fish_seen_subcommand_from get" -l out -r -F
complete -c stockade -n "__fish_stockade_using_subcommand thumbs; and __fish_seen_subcommand_from get" -l log-format -d 'Log format on stderr: text (colour only on a terminal) or json (one object per line)' -r -f -a "text\t'Human-readable lines; colour only on a terminal'
json\t'One JSON object per line'"
complete -c stockade -n "__fish_stockade_using_subcommand thumbs; and __fish_seen_subcommand_from get" -l home -d 'The client\'s home directory (state and, by default, the key) [default: ~/.stockade]' -r -F
complete -c stockade -n "__fish_stockade_using_subcommand thumbs; and __fish_seen_subcommand_from get" -l service -d 'The service server\'s base URL, e.g. https://198.51.100.110:8443' -r
complete -c stockade -n "__fish_stockade_using_subcommand thumbs; and __fish_seen_subcommand_from get" -l ca -d 'The CA certificate (PEM) the service\'s certificate is pinned to' -r -F
complete -c stockade -n "__fish_stockade_using_subcommand thumbs; and __fish_seen_subcommand_from get" -l bind -d 'Source address for connections to the service, and the address the push listener binds' -r
complete -c stockade -n "__fish_stockade_using_subcommand thumbs; and __fish_seen_subcommand_from get" -l key -d 'The encrypted private key; any path, e.g. on removable media [default: HOME/client.key]' -r -F
complete -c stockade -n "__fish_stockade_using_subcommand thumbs; and __fish_seen_subcommand_from get" -l passphrase-file -d 'File holding the key passphrase (otherwise the STOCKADE_PASSPHRASE variable)' -r -F
complete -c stockade -n "__fish_stockade_using_subcommand thumbs; and __fish_seen_subcommand_from get" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c stockade -n "__fish_stockade_using_subcommand thumbs; and __fish_seen_subcommand_from help" -f -a "list" -d 'The reduced images this client may see: public ones and its account\'s'
complete -c stockade -n "__fish_stockade_using_subcommand thumbs; and __fish_seen_subcommand_from help" -f -a "get" -d 'Fetch one reduced image by id, or by name (this account\'s first, then a unique public one)'
complete -c stockade -n "__fish_stockade_using_subcommand thumbs; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c stockade -n "__fish_stockade_using_subcommand templates; and not __fish_seen_subcommand_from list help" -l log-format -d 'Log format on stderr: text (colour only on a terminal) or json (one object per line)' -r -f -a "text\t'Human-readable lines; colour only on a terminal'
json\t'One JSON object per line'"
complete -c stockade -n "__fish_stockade_using_subcommand templates; and not __fish_seen_subcommand_from list help" -l home -d 'The client\'s home directory (state and, by default, the key) [default: ~/.stockade]' -r -F
complete -c stockade -n "__fish_stockade_using_subcommand templates; and not __fish_seen_subcommand_from list help" -l service -d 'The service server\'s base URL, e.g. https://198.51.100.110:8443' -r
complete -c stockade -n "__fish_stockade_using_subcommand templates; and not __fish_seen_subcommand_from list help" -l ca -d 'The CA certificate (PEM) the service\'s certificate is pinned to' -r -F
complete -c stockade -n "__fish_stockade_using_subcommand templates; and not __fish_seen_subcommand_from list help" -l bind -d 'Source address for connections to the service, and the address the push listener binds' -r
complete -c stockade -n "__fish_stockade_using_subcommand templates; and not __fish_seen_subcommand_from list help" -l key -d 'The encrypted private key; any path, e.g. on removable media [default: HOME/client.key]' -r -F
complete -c stockade -n "__fish_stockade_using_subcommand templates; and not __fish_seen_subcommand_from list help" -l passphrase-file -d 'File holding the key passphrase (otherwise the STOCKADE_PASSPHRASE variable)' -r -F
complete -c stockade -n "__fish_stockade_using_subcommand templates; and not __fish_seen_subcommand_from list help" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c stockade -n "__fish_stockade_using_subcommand templates; and not __fish_seen_subcommand_from list help" -f -a "list" -d 'The templates: name, size, slot, mask (and the template key, wrapped to this client)'
complete -c stockade -n "__fish_stockade_using_subcommand templates; and not __fish_seen_subcommand_from list help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c stockade -n "__fish_stockade_using_subcommand templates; and __fish_seen_subcommand_from list" -l log-format -d 'Log format on stderr: text (colour only on a terminal) or json (one object per line)' -r -f -a "text\t'Human-readable lines; colour only on a terminal'
json\t'One JSON object per line'"
complete -c stockade -n "__fish_stockade_using_subcommand templates; and __fish_seen_subcommand_from list" -l home -d 'The client\'s home directory (state and, by default, the key) [default: ~/.stockade]' -r -F
complete -c stockade -n "__fish_stockade_using_subcommand templates; and __fish_seen_subcommand_from list" -l service -d 'The service server\'s base URL, e.g. https://198.51.100.110:8443' -r
complete -c stockade -n "__fish_stockade_using_subcommand templates; and __fish_seen_subcommand_from list" -l ca -d 'The CA certificate (PEM) the service\'s certificate is pinned to' -r -F
complete -c stockade -n "__fish_stockade_using_subcommand templates; and __fish_seen_subcommand_from list" -l bind -d 'Source address for connections to the service, and the address the push listener binds' -r
complete -c stockade -n "__fish_stockade_using_subcommand templates; and __fish_seen_subcommand_from list" -l key -d 'The encrypted private key; any path, e.g. on removable media [default: HOME/client.key]' -r -F
complete -c stockade -n "__fish_stockade_using_subcommand templates; and __fish_seen_subcommand_from list" -l passphrase-file -d 'File holding the key passphrase (otherwise the STOCKADE_PASSPHRASE variable)' -r -F
complete -c stockade -n "__fish_stockade_using_subcommand templates; and __fish_seen_subcommand_from list" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c stockade -n "__fish_stockade_using_subcommand templates; and __fish_seen_subcommand_from help" -f -a "list" -d 'The templates: name, size, slot, mask (and the template key, wrapped to this client)'
complete -c stockade -n "__fish_stockade_using_subcommand templates; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c stockade -n "__fish_stockade_using_subcommand completions" -l log-format -d 'Log format on stderr: text (colour only on a terminal) or json (one object per line)' -r -f -a "text\t'Human-readable lines; colour only on a terminal'
json\t'One JSON object per line'"
complete -c stockade -n "__fish_stockade_using_subcommand completions" -l home -d 'The client\'s home directory (state and, by default, the key) [default: ~/.stockade]' -r -F
complete -c stockade -n "__fish_stockade_using_subcommand completions" -l service -d 'The service server\'s base URL, e.g. https://198.51.100.110:8443' -r
complete -c stockade -n "__fish_stockade_using_subcommand completions" -l ca -d 'The CA certificate (PEM) the service\'s certificate is pinned to' -r -F
complete -c stockade -n "__fish_stockade_using_subcommand completions" -l bind -d 'Source address for connections to the service, and the address the push listener binds' -r
complete -c stockade -n "__fish_stockade_using_subcommand completions" -l key -d 'The encrypted private key; any path, e.g. on removable media [default: HOME/client.key]' -r -F
complete -c stockade -n "__fish_stockade_using_subcommand completions" -l passphrase-file -d 'File holding the key passphrase (otherwise the STOCKADE_PASSPHRASE variable)' -r -F
complete -c stockade -n "__fish_stockade_using_subcommand completions" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c stockade -n "__fish_stockade_using_subcommand man" -l log-format -d 'Log format on stderr: text (colour only on a terminal) or json (one object per line)' -r -f -a "text\t'Human-readable lines; colour only on a terminal'
json\t'One JSON object per line'"
complete -c stockade -n "__fish_stockade_using_subcommand man" -l home -d 'The client\'s home directory (state and, by default, the key) [default: ~/.stockade]' -r -F
complete -c stockade -n "__fish_stockade_using_subcommand man" -l service -d 'The service server\'s base URL, e.g. https://198.51.100.110:8443' -r
complete -c stockade -n "__fish_stockade_using_subcommand man" -l ca -d 'The CA certificate (PEM) the service\'s certificate is pinned to' -r -F
complete -c stockade -n "__fish_stockade_using_subcommand man" -l bind -d 'Source address for connections to the service, and the address the push listener binds' -r
complete -c stockade -n "__fish_stockade_using_subcommand man" -l key -d 'The encrypted private key; any path, e.g. on removable media [default: HOME/client.key]' -r -F
complete -c stockade -n "__fish_stockade_using_subcommand man" -l passphrase-file -d 'File holding the key passphrase (otherwise the STOCKADE_PASSPHRASE variable)' -r -F
complete -c stockade -n "__fish_stockade_using_subcommand man" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c stockade -n "__fish_stockade_using_subcommand compose" -l template -d 'The template\'s name' -r
complete -c stockade -n "__fish_stockade_using_subcommand compose" -l image -d 'The stored image\'s name in this account' -r
complete -c stockade -n "__fish_stockade_using_subcommand compose" -l out -d 'Where to write the result (PNG, or JPEG for .jpg/.jpeg)' -r -F
complete -c stockade -n "__fish_stockade_using_subcommand compose" -l fit -d 'cover: fill the slot, cropping the image; contain: the whole image inside the slot' -r
complete -c stockade -n "__fish_stockade_using_subcommand compose" -l timeout -d 'With --full: seconds to wait for each push' -r
complete -c stockade -n "__fish_stockade_using_subcommand compose" -l log-format -d 'Log format on stderr: text (colour only on a terminal) or json (one object per line)' -r -f -a "text\t'Human-readable lines; colour only on a terminal'
json\t'One JSON object per line'"
complete -c stockade -n "__fish_stockade_using_subcommand compose" -l home -d 'The client\'s home directory (state and, by default, the key) [default: ~/.stockade]' -r -F
complete -c stockade -n "__fish_stockade_using_subcommand compose" -l service -d 'The service server\'s base URL, e.g. https://198.51.100.110:8443' -r
complete -c stockade -n "__fish_stockade_using_subcommand compose" -l ca -d 'The CA certificate (PEM) the service\'s certificate is pinned to' -r -F
complete -c stockade -n "__fish_stockade_using_subcommand compose" -l bind -d 'Source address for connections to the service, and the address the push listener binds' -r
complete -c stockade -n "__fish_stockade_using_subcommand compose" -l key -d 'The encrypted private key; any path, e.g. on removable media [default: HOME/client.key]' -r -F
complete -c stockade -n "__fish_stockade_using_subcommand compose" -l passphrase-file -d 'File holding the key passphrase (otherwise the STOCKADE_PASSPHRASE variable)' -r -F
complete -c stockade -n "__fish_stockade_using_subcommand compose" -l preview -d 'From the service\'s reduced images only'
complete -c stockade -n "__fish_stockade_using_subcommand compose" -l full -d 'At full resolution: the stock server(s) push the image and the template to BIND:7137'
complete -c stockade -n "__fish_stockade_using_subcommand compose" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c stockade -n "__fish_stockade_using_subcommand help; and not __fish_seen_subcommand_from keygen register upload status download list delete password share thumbs templates completions man compose help" -f -a "keygen" -d 'Generate the client\'s RSA key, encrypted under the passphrase (mode 0600; never overwrites)'
complete -c stockade -n "__fish_stockade_using_subcommand help; and not __fish_seen_subcommand_from keygen register upload status download list delete password share thumbs templates completions man compose help" -f -a "register" -d 'Register the client\'s public key with the service (61, 71)'
complete -c stockade -n "__fish_stockade_using_subcommand help; and not __fish_seen_subcommand_from keygen register upload status download list delete password share thumbs templates completions man compose help" -f -a "upload" -d 'Upload a file for review and storage (62, 63; re-upload 101, 104, 105)'
complete -c stockade -n "__fish_stockade_using_subcommand help; and not __fish_seen_subcommand_from keygen register upload status download list delete password share thumbs templates completions man compose help" -f -a "status" -d 'Show, or wait for, the outcome of an upload (64-66)'
complete -c stockade -n "__fish_stockade_using_subcommand help; and not __fish_seen_subcommand_from keygen register upload status download list delete password share thumbs templates completions man compose help" -f -a "download" -d 'Download a stored file: the stock server pushes it to BIND:7137 (121, 137, 124, 125)'
complete -c stockade -n "__fish_stockade_using_subcommand help; and not __fish_seen_subcommand_from keygen register upload status download list delete password share thumbs templates completions man compose help" -f -a "list" -d 'List the stored files of the account'
complete -c stockade -n "__fish_stockade_using_subcommand help; and not __fish_seen_subcommand_from keygen register upload status download list delete password share thumbs templates completions man compose help" -f -a "delete" -d 'Delete a stored file (owner only, signed request)'
complete -c stockade -n "__fish_stockade_using_subcommand help; and not __fish_seen_subcommand_from keygen register upload status download list delete password share thumbs templates completions man compose help" -f -a "password" -d 'Server password actions'
complete -c stockade -n "__fish_stockade_using_subcommand help; and not __fish_seen_subcommand_from keygen register upload status download list delete password share thumbs templates completions man compose help" -f -a "share" -d 'Share the account key with another client, directly (Fig. 10, 11)'
complete -c stockade -n "__fish_stockade_using_subcommand help; and not __fish_seen_subcommand_from keygen register upload status download list delete password share thumbs templates completions man compose help" -f -a "thumbs" -d 'Reduced images kept by the service (claims 6, 14)'
complete -c stockade -n "__fish_stockade_using_subcommand help; and not __fish_seen_subcommand_from keygen register upload status download list delete password share thumbs templates completions man compose help" -f -a "templates" -d 'Templates for composition (claims 7, 15)'
complete -c stockade -n "__fish_stockade_using_subcommand help; and not __fish_seen_subcommand_from keygen register upload status download list delete password share thumbs templates completions man compose help" -f -a "completions" -d 'Print a shell completion script (the Debian package installs bash, zsh and fish ones)'
complete -c stockade -n "__fish_stockade_using_subcommand help; and not __fish_seen_subcommand_from keygen register upload status download list delete password share thumbs templates completions man compose help" -f -a "man" -d 'Print the manual page (roff; the package installs it as stockade(1))'
complete -c stockade -n "__fish_stockade_using_subcommand help; and not __fish_seen_subcommand_from keygen register upload status download list delete password share thumbs templates completions man compose help" -f -a "compose" -d 'Compose a stored image into a template\'s slot (Fig. 12): a preview from reduced images, or the full-resolution result from what the stock server(s) push'
complete -c stockade -n "__fish_stockade_using_subcommand help; and not __fish_seen_subcommand_from keygen register upload status download list delete password share thumbs templates completions man compose help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c stockade -n "__fish_stockade_using_subcommand help; and __fish_seen_subcommand_from password" -f -a "show" -d 'Print the server password (to hand to another client beforehand, 0078)'
complete -c stockade -n "__fish_stockade_using_subcommand help; and __fish_seen_subcommand_from password" -f -a "rotate" -d 'Replace the server password (79-82); the old one stops working'
complete -c stockade -n "__fish_stockade_using_subcommand help; and __fish_seen_subcommand_from share" -f -a "serve" -d 'Client 1: hand the account key to a client that proves the client password (141-147)'
complete -c stockade -n "__fish_stockade_using_subcommand help; and __fish_seen_subcommand_from share" -f -a "request" -d 'Client 30: ask client 1 for the account key (151-156)'
complete -c stockade -n "__fish_stockade_using_subcommand help; and __fish_seen_subcommand_from thumbs" -f -a "list" -d 'The reduced images this client may see: public ones and its account\'s'
complete -c stockade -n "__fish_stockade_using_subcommand help; and __fish_seen_subcommand_from thumbs" -f -a "get" -d 'Fetch one reduced image by id, or by name (this account\'s first, then a unique public one)'
complete -c stockade -n "__fish_stockade_using_subcommand help; and __fish_seen_subcommand_from templates" -f -a "list" -d 'The templates: name, size, slot, mask (and the template key, wrapped to this client)'
