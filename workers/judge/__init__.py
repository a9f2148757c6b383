"""The judge stage: backends that measure a finished action's output and answer pass or fail.

Every judge backend follows ``workers.judge.common``'s contract: ``params`` carry the judged
action (``target``), the spec's threshold overrides (``thresholds``) and what the output should be
(``expect``); the judged output arrives as the input ``subject``. The result's meta is the verdict
(``pass``/``fail``), a score in [0, 1] and every named check with its measured value and
threshold; its files are ``verdict`` (the same, as JSON) and evidence for people (``evidence``...).
"""
