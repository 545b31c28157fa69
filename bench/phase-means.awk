# Reads carrackd's /metrics text and prints the mean ms per call of each
# phase of its pods' start and stop (carrack_pod_start_phase_seconds), and,
# when the pods' start calls were counted, carrackd's own cost in a pod
# start: RunPodSandbox + CreateContainer + StartContainer (their mean time
# as the server measured it) less the CNI plugins' (network_add) and the
# OCI runtime's (runtime_create, runtime_start). Used by node-scale.sh and
# pod-start-cost.sh.
BEGIN { FS = "[{}\" ]+" }
/^carrack_pod_start_phase_seconds_(sum|count)\{/ {
    key = $3 " " $5
    if ($1 ~ /_sum$/) psum[key] = $NF; else pcount[key] = $NF
}
/^carrack_grpc_request_duration_seconds_(sum|count)\{method="\/runtime\.v1\.RuntimeService\/(RunPodSandbox|CreateContainer|StartContainer)",code="Ok"\}/ {
    rpc = $3; sub(/.*\//, "", rpc)
    if ($1 ~ /_sum$/) rsum[rpc] = $NF; else rcount[rpc] = $NF
}
function mean(s, c) { return c > 0 ? 1000 * s / c : 0 }
END {
    for (k in pcount) if (pcount[k] > 0)
        printf "  %-40s %9.2f  (%d calls)\n", k, mean(psum[k], pcount[k]), pcount[k] | "sort"
    close("sort")
    if (rcount["RunPodSandbox"] > 0 && rcount["CreateContainer"] > 0 && rcount["StartContainer"] > 0) {
        own = mean(rsum["RunPodSandbox"], rcount["RunPodSandbox"]) \
            - mean(psum["RunPodSandbox network_add"], pcount["RunPodSandbox network_add"]) \
            + mean(rsum["CreateContainer"], rcount["CreateContainer"]) \
            - mean(psum["CreateContainer runtime_create"], pcount["CreateContainer runtime_create"]) \
            + mean(rsum["StartContainer"], rcount["StartContainer"]) \
            - mean(psum["StartContainer runtime_start"], pcount["StartContainer runtime_start"])
        printf "  %-40s %9.2f\n", "carrackd's own cost in a pod start", own
    }
}
