"""The embedded target: integer graph, tiles, static memory, standalone C, simulator.

:func:`compiler.embedded.compile.build_embedded` lowers a float Relax model (with
calibration data) to C99 for the MAC-array accelerator of :mod:`targets.embedded`;
:class:`compiler.embedded.build.ModelRunner` builds that C with the cycle-counting simulator
and runs it; :func:`compiler.embedded.tune.tune_graph` picks tiles against the simulator.
Nothing is imported here: the artifact runtime takes ``build`` alone, without TVM.
"""
