"""Evaluation configuration: what is measured after every iteration, and how.

The held-out set itself is the run's `eval_data` section; its `max_examples` sets
how many held-out prompts are answered.
"""

from __future__ import annotations

from dataclasses import dataclass

from dnpo.configbase import ConfigError, Section, option


@dataclass
class EvalConfig(Section):
    section_name = "eval"

    logps_batch_size: int = option(8, "sequences per forward pass when scoring log-probs")
    next_generation_logps: bool = option(
        True, "score each iteration's generations under the previous model (stagnation check)"
    )
    stagnation_threshold: float = option(
        0.1,
        "Kolmogorov-Smirnov distance between consecutive iterations' generation log-probs "
        "under the same model below which a stagnation warning is logged",
    )
    similarity: bool = option(
        True, "BLEU and ROUGE-L of iteration k generations against iteration k-1 chosen answers"
    )
    sbert: bool = option(True, "add SBERT cosine similarity (all-MiniLM-L6-v2) to the similarity")
    sbert_batch_size: int = option(32, "texts per SBERT forward pass")
    lm_eval_tasks: list[str] = option(
        [],
        "lm-evaluation-harness tasks: paper (all six), arc, truthfulqa, winogrande, gsm8k, "
        "hellaswag, mmlu, gsm8k_local, or harness:NAME for any other harness task (checked "
        "when lm-eval runs); empty skips lm-eval",
    )
    lm_eval_limit: int = option(0, "max items per lm-eval task; 0 runs every item")
    lm_eval_num_fewshot: int = option(
        -1, "few-shot examples for every lm-eval task; -1 uses each task's default"
    )
    lm_eval_batch_size: int = option(8, "lm-eval batch size")
    lm_eval_apply_chat_template: bool = option(
        False, "wrap lm-eval prompts in the model's chat template"
    )
    lm_eval_max_gen_toks: int = option(256, "max new tokens per answer of the gsm8k_local task")
    gsm8k_path: str = option("", "GSM8K-format JSONL (question, answer) for the gsm8k_local task")
    gsm8k_fewshot_path: str = option(
        "", "GSM8K-format JSONL from which gsm8k_local draws few-shot examples"
    )

    def validate(self) -> None:
        super().validate()
        if self.lm_eval_limit < 0:
            raise ConfigError(f"eval.lm_eval_limit must be >= 0, got {self.lm_eval_limit}")
        for name in (
            "logps_batch_size",
            "sbert_batch_size",
            "lm_eval_batch_size",
            "lm_eval_max_gen_toks",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"eval.{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.stagnation_threshold < 1:
            raise ConfigError(
                f"eval.stagnation_threshold must be in (0, 1) because it bounds a "
                f"Kolmogorov-Smirnov distance, got {self.stagnation_threshold}"
            )
        if self.lm_eval_num_fewshot < -1:
            raise ConfigError(
                f"eval.lm_eval_num_fewshot must be >= 0, or -1 for task defaults, "
                f"got {self.lm_eval_num_fewshot}"
            )
        # Imported here because lm_eval.py imports this module.
        from dnpo.evaluation.lm_eval import check_task_names

        check_task_names(self.lm_eval_tasks)
        if "gsm8k_local" in self.lm_eval_tasks and not self.gsm8k_path:
            raise ConfigError(
                "eval.lm_eval_tasks contains gsm8k_local but eval.gsm8k_path is empty; "
                "set it to a GSM8K-format JSONL file"
            )
