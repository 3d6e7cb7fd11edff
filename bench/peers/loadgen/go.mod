module modelfleet/bench/loadgen

go 1.22
