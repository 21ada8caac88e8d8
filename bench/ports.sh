# Loopback port helpers shared by the benchmark scripts (sourced, not run).

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
