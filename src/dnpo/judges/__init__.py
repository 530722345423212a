"""Judges that score answers 0-100: verifier, openai, hf and reward-model."""

from __future__ import annotations

from dnpo.judges.base import Judge, JudgeResult, load_template, render_judge_prompt, template_hash
from dnpo.judges.config import JudgeConfig
from dnpo.judges.parsing import parse_score, parse_verdict
from dnpo.judges.runner import judge_generations, load_judgments

__all__ = [
    "Judge",
    "JudgeConfig",
    "JudgeResult",
    "judge_generations",
    "load_judgments",
    "load_template",
    "make_judge",
    "parse_score",
    "parse_verdict",
    "render_judge_prompt",
    "template_hash",
]


def make_judge(config: JudgeConfig) -> Judge:
    """Build the configured judge; model judges are wrapped in the SQLite cache when enabled.

    The verifier is never cached because it is cheaper than a cache lookup.
    """
    if config.type == "verifier":
        from dnpo.judges.verifier import VerifierJudge

        return VerifierJudge()
    template = ""
    if config.type == "openai":
        from dnpo.judges.openai_judge import OpenAIJudge

        template = load_template(config.template_file)
        judge: Judge = OpenAIJudge(config, template)
    elif config.type == "hf":
        from dnpo.judges.hf import HFJudge

        template = load_template(config.template_file)
        judge = HFJudge(config, template)
    else:
        from dnpo.judges.hf import RewardModelJudge

        judge = RewardModelJudge(config)
    if not config.cache:
        return judge
    from dnpo.judges.cache import CachedJudge, JudgeCache, default_cache_path

    cache = JudgeCache(config.cache_path or default_cache_path())
    return CachedJudge(judge, cache, template_hash(template) if template else "")
