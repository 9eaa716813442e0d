"""`stormvl bench`: what token reduction buys. `settings` names the compared models, `flops` counts
their work analytically, `memory` tallies peak tensor memory, `run` times the model's own encode
methods and LLM, `report` writes the table, JSON and plot."""
