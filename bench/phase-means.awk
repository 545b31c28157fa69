# Reads carrackd's /metrics text and prints the mean ms per call of each
# phase of its pods' start and stop (carrack_pod_start_phase_seconds).
# Used by node-scale.sh.
BEGIN { FS = "[{}\" ]+" }
/^carrack_pod_start_phase_seconds_(sum|count)\{/ {
    key = $3 " " $5
    if ($1 ~ /_sum$/) psum[key] = $NF; else pcount[key] = $NF
}
function mean(s, c) { return c > 0 ? 1000 * s / c : 0 }
END {
    for (k in pcount) if (pcount[k] > 0)
        printf "  %-40s %9.2f  (%d calls)\n", k, mean(psum[k], pcount[k]), pcount[k] | "sort"
    close("sort")
}
