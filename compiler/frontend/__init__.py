"""ONNX -> Relax: read and check a model, pin its shapes, rewrite what TVM's importer lacks or
gets wrong into exact equivalents, and import it into a Relax IRModule.

``importer`` is the entry point (:func:`load_model`); ``prep`` folds shape subgraphs and runs
the op rewrites of ``rewrites`` (with ``decompose``, ``guards``, ``qop``, ``rnn``, ``sequences``);
``converters`` plugs hwcc's own converters into TVM's importer; ``narrow_types`` carries
float8/int4-like element types as bytes; ``int_casts`` makes every float -> integer
conversion of the imported module explicit (clamped, rounded, NaN mapped) so that its
result does not depend on the CPU's vector ISA.
"""

from .importer import (
    ImportedModel,
    TensorSpec,
    graph_inputs,
    load_model,
    model_opset,
    parse_input_shapes,
    read_model,
    resolve_input_specs,
    unsupported_nodes,
)

__all__ = ["ImportedModel", "TensorSpec", "graph_inputs", "load_model", "model_opset",
           "parse_input_shapes", "read_model", "resolve_input_specs", "unsupported_nodes"]
