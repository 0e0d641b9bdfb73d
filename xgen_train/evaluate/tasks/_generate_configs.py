"""Writes the task YAMLs of this folder (run once; the YAMLs are committed): `python _generate_configs.py`.

MMLU: lm-eval's own default MMLU prompt (`lm_eval/tasks/mmlu/default`), which is SPEC §6's: the subject line,
a blank line, question, `A. ..` to `D. ..`, `Answer:`, letters scored, the first 5 `dev` rows as shots
(sampler first_n), micro-average over all questions (weight_by_size). The other tasks copy lm-eval's
prompts; only the data source changes (local copies, see local_data.py).
"""
from __future__ import annotations

import os

SUBJECTS = {
    "abstract_algebra": "stem", "anatomy": "stem", "astronomy": "stem", "business_ethics": "other",
    "clinical_knowledge": "other", "college_biology": "stem", "college_chemistry": "stem",
    "college_computer_science": "stem", "college_mathematics": "stem", "college_medicine": "other",
    "college_physics": "stem", "computer_security": "stem", "conceptual_physics": "stem",
    "econometrics": "social_sciences", "electrical_engineering": "stem", "elementary_mathematics": "stem",
    "formal_logic": "humanities", "global_facts": "other", "high_school_biology": "stem",
    "high_school_chemistry": "stem", "high_school_computer_science": "stem",
    "high_school_european_history": "humanities", "high_school_geography": "social_sciences",
    "high_school_government_and_politics": "social_sciences", "high_school_macroeconomics": "social_sciences",
    "high_school_mathematics": "stem", "high_school_microeconomics": "social_sciences",
    "high_school_physics": "stem", "high_school_psychology": "social_sciences", "high_school_statistics": "stem",
    "high_school_us_history": "humanities", "high_school_world_history": "humanities", "human_aging": "other",
    "human_sexuality": "social_sciences", "international_law": "humanities", "jurisprudence": "humanities",
    "logical_fallacies": "humanities", "machine_learning": "stem", "management": "other", "marketing": "other",
    "medical_genetics": "other", "miscellaneous": "other", "moral_disputes": "humanities",
    "moral_scenarios": "humanities", "nutrition": "other", "philosophy": "humanities", "prehistory": "humanities",
    "professional_accounting": "other", "professional_law": "humanities", "professional_medicine": "other",
    "professional_psychology": "social_sciences", "public_relations": "social_sciences",
    "security_studies": "social_sciences", "sociology": "social_sciences", "us_foreign_policy": "social_sciences",
    "virology": "other", "world_religions": "humanities",
}

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> None:
    for subject, category in SUBJECTS.items():
        name = subject.replace("_", " ")
        with open(os.path.join(HERE, "mmlu", f"mmlu_{subject}.yaml"), "w", encoding="utf-8") as fh:
            fh.write(f'include: _default_template_yaml\ntask: mmlu_{subject}\ntask_alias: {subject}\n'
                     f'tag: mmlu_{category}_tasks\n'
                     f'description: "The following are multiple choice questions (with answers) about {name}.\\n\\n"\n'
                     f'dataset_kwargs:\n  subdir: hails/mmlu_no_train/{subject}\n  task: mmlu_{subject}\n')


if __name__ == "__main__":
    main()
