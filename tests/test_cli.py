"""fwdrev.cli: the known third-party deprecation warnings are silenced, by message and module only."""

import warnings

from fwdrev.cli import quiet_third_party_warnings

DEPRECATED = "`torch.distributed.reduce_scatter_tensor` is deprecated. Please use ..."


def emit(message: str, module: str, category=FutureWarning) -> None:
    warnings.warn_explicit(message, category, filename=f"{module}.py", lineno=1, module=module, registry={})


def test_quiet_third_party_warnings_drops_only_the_listed_ones():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_third_party_warnings()
        emit(DEPRECATED, "torch.distributed.c10d_logger")  # DeepSpeed's collectives: silenced
        emit(DEPRECATED, "fwdrev.sharding")  # our own call would still show
        emit("`torch.distributed.reduce_scatter_tensor` is deprecated", "torch.distributed.c10d_logger",
             DeprecationWarning)  # another category still shows
        emit("something else is deprecated", "torch.distributed.c10d_logger")
    assert [(str(w.message)[:40], w.category.__name__) for w in caught] == [
        (DEPRECATED[:40], "FutureWarning"),
        ("`torch.distributed.reduce_scatter_tensor", "DeprecationWarning"),
        ("something else is deprecated", "FutureWarning")]
