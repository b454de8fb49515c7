"""lm-eval task YAMLs for chain-of-thought evaluation, installed as `scotd_harness.tasks`.

For each dataset of the registry (csqa, quarel, openbookqa, imdb_original, imdb_contrast, csqa2) there are four
tasks, each a folder `<dataset>/` of four YAMLs that include a shared template from this folder:

- `scotd_<dataset>`: greedy chain of thought in the student format (`_scotd_cot.yaml`);
- `scotd_<dataset>_sc`: self-consistency, `repeats` sampled chains and a majority vote (`_scotd_sc.yaml`);
- `scotd_<dataset>_fewshot`: the teacher's few-shot CoT prompt, for teachers and undistilled models
  (`_scotd_fewshot.yaml`);
- `scotd_<dataset>_direct`: the answer without a rationale, scored by log-likelihood (`_scotd_direct.yaml`).

Tags `scotd` (greedy csqa, quarel, openbookqa) and `scotd_challenge` (greedy imdb_original, imdb_contrast, csqa2)
select the usual sets. Prompts, stop strings and the answer parser come from `scotd_harness.formats`; the data
from the dataset registry (`utils.py`). After `pip install` the stock `lm_eval` finds these tasks by itself
(`scotd_harness.lm_eval_hook`); `--include_path` pointing at this folder works too.
"""
