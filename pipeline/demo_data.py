"""The demo's dataset: distinct, realistic short documents on six topics, plus a few bad rows.

Built from sentence templates and fillers so that no two documents are equal (an embedding demo
whose nearest neighbours are copies of the query shows nothing) while documents of one topic
share vocabulary and meaning (so the neighbours it finds are plausible and checkable by eye).
Deterministic: the same seed gives the same rows.
"""

from __future__ import annotations

import random

TOPICS: dict[str, tuple[list[str], dict[str, list[str]]]] = {
    "astronomy": (
        [
            "The {instrument} captured {object} in unprecedented detail last {time}.",
            "Astronomers used the {instrument} to measure how fast {object} is moving away from us.",
            "A new study suggests {object} formed much earlier than models predicted.",
            "Light from {object} took billions of years to reach the {instrument}.",
            "Amateur observers can spot {object} with a small telescope on a clear {time}.",
        ],
        {
            "instrument": ["James Webb telescope", "radio array in Chile", "Hubble telescope", "new X-ray observatory"],
            "object": ["a distant spiral galaxy", "a young star cluster", "a supermassive black hole",
                       "a comet near Jupiter", "an exoplanet with water vapour"],
            "time": ["week", "night", "month", "winter"],
        },
    ),
    "cooking": (
        [
            "Simmer the {ingredient} with garlic and olive oil until the sauce thickens.",
            "For a better {dish}, roast the {ingredient} before adding the stock.",
            "This {dish} recipe needs only {ingredient}, salt and a good pan.",
            "Let the {dish} rest for ten minutes so the {ingredient} can soak up the flavours.",
            "My grandmother always added a pinch of {spice} to her {dish}.",
        ],
        {
            "ingredient": ["tomatoes", "mushrooms", "onions", "red peppers", "chickpeas"],
            "dish": ["risotto", "curry", "lasagne", "vegetable soup", "stew"],
            "spice": ["nutmeg", "smoked paprika", "cumin", "saffron"],
        },
    ),
    "finance": (
        [
            "The central bank raised interest rates to slow {indicator} this {period}.",
            "Shares of {company} fell after the firm cut its profit forecast for the {period}.",
            "Investors moved money into {asset} as worries about {indicator} grew.",
            "Analysts expect {indicator} to ease, which could lift {asset} prices.",
            "{company} reported record revenue but warned that {indicator} would hurt margins.",
        ],
        {
            "indicator": ["inflation", "unemployment", "the trade deficit", "wage growth"],
            "company": ["the retailer", "a large chipmaker", "the airline", "a regional bank"],
            "asset": ["government bonds", "gold", "technology stocks", "the dollar"],
            "period": ["quarter", "year", "spring"],
        },
    ),
    "football": (
        [
            "The striker scored twice in the second half as {team} beat their rivals.",
            "{team} sacked their manager after a run of {count} defeats.",
            "A late penalty gave {team} a dramatic win in the {competition}.",
            "The goalkeeper made {count} saves to keep {team} in the {competition}.",
            "Fans of {team} celebrated in the streets after the {competition} final.",
        ],
        {
            "team": ["the home side", "the champions", "the newly promoted club", "the national team"],
            "count": ["five", "seven", "three", "nine"],
            "competition": ["cup", "league", "European qualifier", "derby"],
        },
    ),
    "medicine": (
        [
            "The patient recovered quickly after surgeons repaired the damaged {organ}.",
            "A clinical trial found the new drug reduced {condition} symptoms by a third.",
            "Doctors recommend regular exercise to lower the risk of {condition}.",
            "Early screening for {condition} helps doctors treat it before the {organ} is damaged.",
            "The hospital opened a new ward for patients with {condition}.",
        ],
        {
            "organ": ["heart valve", "kidney", "liver", "lung"],
            "condition": ["type 2 diabetes", "high blood pressure", "asthma", "migraine"],
        },
    ),
    "travel": (
        [
            "We took the night train to {place} and woke up to views of the mountains.",
            "The cheapest way to reach {place} is a ferry followed by a short {transport} ride.",
            "In {place}, the old town is best explored on foot early in the morning.",
            "Book your {transport} tickets to {place} early: summer prices double.",
            "Our guide in {place} showed us a hidden beach away from the crowds.",
        ],
        {
            "place": ["Lisbon", "the Dolomites", "Kyoto", "the Scottish Highlands", "Crete"],
            "transport": ["bus", "train", "taxi", "bike"],
        },
    ),
}

QUERIES = [
    "Which team won the match?",
    "How do I make a tasty pasta sauce?",
    "What did the space telescope discover?",
    "Is it a good time to buy bonds?",
]

BAD_ROWS = [None, "", "   ", "\t\n"]


def _sentence(rng: random.Random, topic: str) -> str:
    templates, fillers = TOPICS[topic]
    template = rng.choice(templates)
    return template.format(**{k: rng.choice(v) for k, v in fillers.items()})


def make_documents(n: int = 400, seed: int = 0) -> list[tuple[str, object, str]]:
    """``(doc_id, text, topic)``: ``n`` distinct documents of 1-4 sentences of one topic, with
    the bad rows of :data:`BAD_ROWS` put in at fixed places (they become error records)."""
    rng = random.Random(seed)
    names = sorted(TOPICS)
    seen: set[str] = set()
    rows: list[tuple[str, object, str]] = []
    while len(rows) < n:
        topic = names[len(rows) % len(names)]
        text = " ".join(_sentence(rng, topic) for _ in range(rng.randint(1, 4)))
        if text in seen:
            continue
        seen.add(text)
        rows.append((f"doc-{len(rows):05d}", text, topic))
    for j, bad in enumerate(BAD_ROWS):
        at = (j * 97 + 11) % n
        rows[at] = (rows[at][0], bad, rows[at][2])
    return rows
