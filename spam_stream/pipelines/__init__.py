"""Streaming: the pipelined executor and the video and batch pipelines built on SPAM's per-frame stages.

* :mod:`.executor` — stages in threads joined by bounded queues, results in input order, errors carried per item;
* :mod:`.stages` — SPAM's stages (the methods ``SPAM.segment`` composes) as executor stages;
* :mod:`.temporal` — video coherence: prior every N frames, warm starts, persistent superpixel ids;
* :mod:`.video` — decode → stages → write for one video file;
* :mod:`.batch` — many images: sources (folders, globs, lists), sharding, resume, manifest.
"""
from .executor import Pipeline, PipelineError, Stage, run_sequential

__all__ = ["Pipeline", "PipelineError", "Stage", "run_sequential"]
