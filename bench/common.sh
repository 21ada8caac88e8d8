# Helpers shared by the benchmark scripts (sourced, not run): loopback
# ports, and reading loadgen's JSON lines into table cells.

# port_in_use PORT: true when something listens on 127.0.0.1:PORT.
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# free_port: prints a port free on 127.0.0.1, below the usual ephemeral range
# (32768+) so that no client socket can be holding it.
free_port() {
    local port
    for _ in $(seq 1 200); do
        port=$(( 20000 + RANDOM % 12000 ))
        if ! port_in_use "$port"; then
            echo "$port"
            return 0
        fi
    done
    return 1
}

# json_field KEY < jsonl: the value of KEY on each line, one per line (null
# values left out).
json_field() {
    sed -n "s/.*\"$1\":\\([^,}]*\\).*/\\1/p" | grep -v null || true
}

# summarize DECIMALS: "median [min–max]" of the numbers on stdin (just the
# median for one), or nothing if there are none.
summarize() {
    sort -g | awk -v d="$1" '
        { v[NR] = $1 }
        END {
            if (NR == 0) exit
            m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
            if (NR == 1) printf "%.*f", d, m
            else printf "%.*f [%.*f–%.*f]", d, m, d, v[1], d, v[NR]
        }'
}
