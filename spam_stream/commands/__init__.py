"""The subcommands of ``spam-stream``, one module each, and the flags they share (:mod:`.common`)."""
