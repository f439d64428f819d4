"""One-off research probes: each answers one question the NOTES record (``python -m
benchmarks.probes.<name>``). The maintained harness is the package ``benchmarks`` itself
(``run``, ``report``, ``headline``, ``performance_profile``, ``overheads``, ``selftuning``,
``device``, ``conformance``, ``experimental``, ``step_cost``, ``sharded_step``)."""
