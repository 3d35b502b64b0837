"""The paper's study: the findings of Tian et al. (KDD 2021) on class-wise robustness, re-tested on
our own runs.

`python -m cwr_fast.reproduce` (or `python -m cwr_fast.study.reproduce`) trains the baselines and
the class-wise defenses with `cwr_fast.train`, evaluates them with `cwr_fast.evaluate`, and writes
FINDINGS.md. The modules, lowest first:

- `published`: what the paper and its companions state (the paper, the baselines, the published
  CIFAR-10 pattern);
- `findings`: each finding as a statistical test with a stated null hypothesis, and its power;
- `collect`: a finished study folder's runs read into every number of FINDINGS.md (findings.json);
- `plots`: the figures of FINDINGS.md;
- `document`: FINDINGS.md itself, one function per section, and the combined document of several
  datasets;
- `reproduce`: the runner (the jobs, their order, resuming, the command line).

The library never imports this package; the study uses the library (train, evaluate, compare).
"""
