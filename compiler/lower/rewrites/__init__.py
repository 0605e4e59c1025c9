"""Graph rewrites that run on the Relax module before legalization, one per file: each turns
a pattern of high-level ops into a kernel hwcc schedules better than TVM's lowering of it."""
