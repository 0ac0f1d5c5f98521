"""The pure core: records, the combining rule, mapping derivation, annotation, the
audience rule, the reorder buffer and the stages that chain them.

No I/O, no threads, no Kafka, no clock of its own (time is injected). Everything else in
unifeed drives these classes from the outside. May import: the standard library, msgspec
and sortedcontainers; nothing else of unifeed.
"""
