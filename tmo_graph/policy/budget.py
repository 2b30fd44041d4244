"""Expected cost of each action, and the mask that keeps a dialogue inside its budgets."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations

from tmo_graph import costs
from tmo_graph.policy.base import LOCAL, Action, Cost
from tmo_graph.settings import Settings
from tmo_graph.state import Budget

# Rough prompt size in tokens per character (English averages ~4 characters a token).
_TOKENS_PER_CHAR = 0.25
# Subsets of more views than this are not enumerated (2**X grows fast).
MAX_VIEWS_PER_CALL = 4


def all_actions(view_names: Sequence[str]) -> list[Action]:
    """Local, then cloud with every view subset in (size, lexicographic) order, as in the paper."""
    actions = [LOCAL]
    for size in range(min(len(view_names), MAX_VIEWS_PER_CALL) + 1):
        actions += [Action("cloud", combo) for combo in combinations(view_names, size)]
    return actions


def expected_cost(action: Action, prompt_chars: int, settings: Settings) -> Cost:
    """What ``action`` is expected to cost: device profile for local, network + prices for cloud."""
    if action.route == "local":
        seconds = settings.local.max_new_tokens / settings.local.tokens_per_s
        power = costs.device(settings.device.profile).power_w
        return Cost(
            seconds, costs.local_energy_cost_usd(seconds, power, settings.device.usd_per_kwh)
        )
    k = len(action.views)
    network_s = costs.cloud_time_s(costs.network(settings.cloud.network), k)
    seconds = network_s + settings.cloud.max_tokens / settings.cloud.tokens_per_s
    price = costs.price_for(settings.cloud.price_as, price_table(settings))
    input_tokens = int(prompt_chars * _TOKENS_PER_CHAR) + k * price.tokens_per_image
    return Cost(seconds, costs.cloud_call_cost_usd(price, input_tokens, settings.cloud.max_tokens))


def price_table(settings: Settings) -> dict[str, costs.ModelPrice]:
    """The built-in prices, plus or overridden by the config's ``prices:`` rows."""
    table = dict(costs.PRICES)
    for name, row in settings.prices.items():
        table[name] = costs.ModelPrice(**row.model_dump())
    return table


def affordable(
    actions: Sequence[Action], budget: Budget, prompt_chars: int, settings: Settings
) -> tuple[dict[Action, Cost], list[Action]]:
    """Split actions into those whose expected cost fits ``budget`` and those masked.

    The local answer is never masked: it is the last resort when the budget runs out.
    """
    allowed: dict[Action, Cost] = {}
    masked: list[Action] = []
    for action in actions:
        cost = expected_cost(action, prompt_chars, settings)
        if action == LOCAL or cost.fits(budget):
            allowed[action] = cost
        else:
            masked.append(action)
    return allowed, masked
