#!/bin/sh
# Install dfir-ar's plug-ins as Wazuh active-response executables on an AGENT (run as root):
#
#   examples/wazuh/install.sh                      # every plug-in, into /var/ossec/active-response/bin
#   examples/wazuh/install.sh -d DIR firewall-drop pcap
#
# Each plug-in becomes a symlink DIR/dfir-ar-<plug-in> -> dfir-ar (plus DIR/dfir-ar-wazuh-ar, which
# runs the plug-in named by "--plugin NAME" in a command's extra_args). Wazuh's own scripts are
# never touched: every name starts with "dfir-ar-". Symlinks are root-owned; the directory keeps
# Wazuh's root:wazuh 0750.
set -eu

dir=/var/ossec/active-response/bin
if [ "${1:-}" = "-d" ]; then
    dir=$2
    shift 2
fi
dfir_ar=${DFIR_AR:-$(command -v dfir-ar || true)}
if [ -z "$dfir_ar" ] || [ ! -x "$dfir_ar" ]; then
    echo "install.sh: dfir-ar not found on PATH; set DFIR_AR=/path/to/dfir-ar" >&2
    exit 1
fi
if [ ! -d "$dir" ]; then
    echo "install.sh: $dir does not exist; is this a Wazuh agent? (use -d DIR)" >&2
    exit 1
fi
if [ "$#" -eq 0 ]; then
    set -- firewall-drop host-deny route-null disable-account pcap processes yara memory
fi

link() {
    target="$dir/$1"
    if [ -e "$target" ] && [ ! -L "$target" ]; then
        echo "install.sh: $target exists and is not a symlink; left alone" >&2
        return 0
    fi
    ln -sfn "$dfir_ar" "$target"
    echo "$target -> $dfir_ar"
}

for plugin in "$@"; do
    case "$plugin" in
        */* | .* | "") echo "install.sh: bad plug-in name '$plugin'" >&2; exit 1 ;;
    esac
    link "dfir-ar-$plugin"
done
link dfir-ar-wazuh-ar
