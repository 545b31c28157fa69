# Reads carrackd's "<RPC> timed" log lines (carrackd::phases at DEBUG), as
# jq turns them into "rpc<TAB>total_ms<TAB>phases" (phases: "name=1.234ms
# …"), of pods started one after the other (RunPodSandbox, CreateContainer,
# StartContainer in turn); prints the median and p90 of each phase and of
# carrackd's own cost in a pod start: the three calls less the CNI
# plugins' time (network_add) and the OCI runtime's (runtime_create,
# runtime_start). Medians, since a shared machine's noise skews means.
# Used by pod-start-cost.sh.
BEGIN { FS = "\t" }
function phase(text, name,    n, i, kv) {
    n = split(text, kv, " ")
    for (i = 1; i <= n; i++)
        if (index(kv[i], name "=") == 1) { sub(/^[^=]*=/, "", kv[i]); sub(/ms$/, "", kv[i]); return kv[i] + 0 }
    return 0
}
{
    rpc = $1; total = $2 + 0
    n = split($3, kv, " ")
    for (i = 1; i <= n; i++) {
        split(kv[i], p, "="); sub(/ms$/, "", p[2])
        print rpc " " p[1], p[2] + 0 | "sort -k1,2 -k3n > " tmp
    }
    if (rpc == "RunPodSandbox") own[++runs] = total - phase($3, "network_add")
    if (rpc == "CreateContainer") own[++creates] += total - phase($3, "runtime_create")
    if (rpc == "StartContainer") own[++starts] += total - phase($3, "runtime_start")
}
END {
    pods = runs < creates ? runs : creates
    pods = pods < starts ? pods : starts
    for (i = 1; i <= pods; i++) print "own cost in a pod start", own[i] | "sort -k1,2 -k3n > " tmp
    close("sort -k1,2 -k3n > " tmp)
    while ((getline line < tmp) > 0) {
        m = split(line, f, " "); key = f[1]
        for (j = 2; j < m; j++) key = key " " f[j]
        v[key, ++count[key]] = f[m]
    }
    for (k in count) {
        c = count[k]
        printf "  %-40s %8.2f %8.2f  (%d)\n", k, v[k, int((c + 1) / 2)], v[k, int(c * 0.9 + 0.999)], c | "sort"
    }
}
