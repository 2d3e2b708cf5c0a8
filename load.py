import sys
from benchmarks.loadgen import LoadGenerator
from benchmarks.workload import mixed_spec
rate=float(sys.argv[1]); secs=float(sys.argv[2])
with LoadGenerator() as g:
    g.describe(mixed_spec(1000))
    print(g.send({"transport":"udp","address":["127.0.0.1",18125]}, mixed_spec(1000), rate, secs))
