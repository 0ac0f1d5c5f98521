"""``unifeed demo``: the whole pipeline on the embedded broker with an outage, verified.
It runs the real commands as subprocesses (`unifeed.demo.run`) and checks what they
wrote (`unifeed.demo.verify`).

May import: `unifeed.core`, `unifeed.kafka`, `unifeed.sim` (and starts `unifeed.cli`
only as a subprocess).
"""
