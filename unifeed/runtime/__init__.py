"""The Kafka runtime: threads between Kafka and the core (readers, annotator, writer),
bounded channels, start planning, output transactions and tail reconciliation, the
instance claim, metrics and the status line.

This is the public way to embed a Kafka run in another program (`CombineRun`,
`RuntimeOptions`). May import: `unifeed.core`, `unifeed.kafka`, `unifeed.checkpoint`;
never `unifeed.cli`.
"""
