# Functions the bench scripts share to remove what a run made on the node
# (sourced, not run). Each is idempotent and best effort: a run killed half
# way is cleaned up by the next one.

# The PIDs of the processes whose command line names the directory $1 (a
# daemon's, a shim's, a runtime's, a bench's), the calling shell excepted:
# one grep over every command line (grep's own names $1 too, and is gone
# once it has answered).
pids_naming() {
    local p
    for p in $(grep -laF -- "$1/" /proc/[0-9]*/cmdline 2>/dev/null | cut -d/ -f3); do
        [ "$p" = $$ ] || [ "$p" = "$BASHPID" ] || [ ! -e "/proc/$p" ] || echo "$p"
    done
}

# Sends signal $1 to the PIDs on stdin.
kill_all() {
    local sig=$1 p
    while read -r p; do kill "-$sig" "$p" 2>/dev/null || true; done
}

# Unmounts every mount under the directory $1, deepest first; lazily when
# one is still busy.
unmount_under() {
    awk -v w="$1/" 'index($5, w) == 1 {print $5}' /proc/self/mountinfo | sort -r \
        | while read -r p; do umount "$p" 2>/dev/null || umount -l "$p" 2>/dev/null || true; done
}

# Deletes the iptables rules that name the CNI network $1 and the per-pod
# CNI-* chains they jump to.
remove_cni_rules() {
    local net=$1 table rule chain
    for table in nat filter; do
        { iptables -t "$table" -S 2>/dev/null || true; } | { grep -F -- "name: \\\"$net\\\"" || true; } \
            | { grep '^-A ' || true; } | while read -r rule; do
                eval "iptables -t $table ${rule/#-A/-D}" 2>/dev/null || true
                chain=$(sed -n 's/.* -j \(CNI-[0-9a-f]*\)\( .*\)\?$/\1/p' <<<"$rule")
                if [ -n "$chain" ]; then
                    iptables -t "$table" -F "$chain" 2>/dev/null || true
                    iptables -t "$table" -X "$chain" 2>/dev/null || true
                fi
            done
    done
}
