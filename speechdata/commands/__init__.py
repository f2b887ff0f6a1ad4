"""The ``speechdata`` commands: one module per command, nothing else.

Each module holds ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int`` and
imports the library only inside those functions, so that :mod:`speechdata.cli` can list every
command cheaply and ``speechdata shard`` does not pay for the trainer's imports. The library
modules they call (:mod:`speechdata.shards.write`, :mod:`speechdata.inspect`, ...) hold no
command-line code. Options several commands share live in :mod:`speechdata.commands.options`.
"""
