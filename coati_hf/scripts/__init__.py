"""The training scripts, shaped like TRL's ``trl/scripts``: one per stage, every launcher.

    python -m coati_hf.scripts.sft --config recipe.yaml [--option value ...]
    accelerate launch --multi_gpu --num_processes 2 -m coati_hf.scripts.sft --config recipe.yaml
    coati-hf sft --config recipe.yaml [--num_processes 2]        (launches accelerate for you)

The repository's ``scripts/sft.py``, ``scripts/reward.py`` and ``scripts/ppo.py`` run these
modules. Each module has ``make_parser()``, ``check(...)`` and ``main(...)``; the rules they share
(config files, launcher options, one-line errors, data and model sources) are in
:mod:`coati_hf.scripts.common`, and ``coati-hf``'s launching in :mod:`coati_hf.scripts.launch`.
"""
