"""``unifeed demo``: the whole pipeline on the embedded broker with an outage, verified.
It plays simulated traffic into the broker as real time (`unifeed.demo.traffic`), runs
the real commands as subprocesses (`unifeed.demo.commands`), drives the scripted run
(`unifeed.demo.run`) and checks what the commands wrote (`unifeed.demo.verify`).

May import: `unifeed.core`, `unifeed.kafka`, `unifeed.sim` (and starts `unifeed.cli`
only as a subprocess).
"""
