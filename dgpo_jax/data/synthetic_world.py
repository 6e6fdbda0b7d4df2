"""A seeded fictional world for agentic RAG: entities, a passage corpus, questions, an oracle.

Entity types: countries, cities, organisations, people, works. Relations: city→country,
country→capital, organisation→headquarters city and founder, person→birth city and employer,
work→creator. Names are built from syllables and deliberately share parts (organisations named
after cities, people sharing first names or surnames), so search results contain distractors.

Question families mirror the benchmarks: single-hop (NQ/TriviaQA-like), bridge and comparison
(HotpotQA/2Wiki-like) and three-hop (MuSiQue-like). Splits are drawn over disjoint subject
entities: a dev/test question's subject never appears in a training question, and its passage
is left out of the pretraining text, so answers must be found by searching.

Files use the real formats: corpus `{"id", "contents"}`; questions FlashRAG
`{"id", "question", "golden_answers", ...}` with extra fields `family`, `hops` (the oracle's
search queries and facts) and `gold_ids`.
"""

import dataclasses
import json
import os
import re
import zlib

import numpy as np

SYLLABLES = ("ka ri mo ve lan tor is ma dre no sel vi ra qu om ber tal en ith os ul ar fen gal "
             "hu ri ze pa lo cor din mer sa vol ty an").split()
OCCUPATIONS = ("painter", "engineer", "poet", "physician", "architect", "composer", "botanist",
               "sculptor", "chemist", "historian")
ORG_SUFFIX = ("Institute", "Labs", "Company", "Foundation", "Guild", "Works")
WORK_KINDS = ("novel", "film", "opera", "poem collection")
FAMILIES = ("single_hop", "bridge", "comparison", "three_hop")


@dataclasses.dataclass
class World:
  countries: list
  cities: list
  orgs: list
  people: list
  works: list

  def passages(self):
    """(id, title, text) for every entity: one passage each, made of its fact sentences (the
    oracle's reasoning restates these sentences verbatim)."""
    out = []
    for kind in ("countries", "cities", "orgs", "people", "works"):
      for e in getattr(self, kind):
        out.append((e["id"], e["name"], " ".join(self.facts(kind, e).values())))
    return out

  def facts(self, kind, e) -> dict:
    """An entity's fact sentences by relation."""
    n = e["name"]
    if kind == "countries":
      return {"kind": f"{n} is a country.",
              "capital": f"The capital of {n} is {self.cities[e['capital']]['name']}.",
              "population": f"{n} has a population of {e['population']} thousand."}
    if kind == "cities":
      return {"kind": f"{n} is a city.",
              "country": f"{n} is in {self.countries[e['country']]['name']}.",
              "founded": f"{n} was founded in {e['founded']}."}
    if kind == "orgs":
      return {"kind": f"{n} is an organisation based in {self.cities[e['city']]['name']}.",
              "founded": f"{n} was founded in {e['founded']}.",
              "founder": f"{n} was founded by {self.people[e['founder']]['name']}."}
    if kind == "people":
      return {"kind": f"{n} is a {e['occupation']}.",
              "city": f"{n} was born in {self.cities[e['city']]['name']}.",
              "born": f"{n} was born in the year {e['born']}.",
              "employer": f"{n} works for {self.orgs[e['employer']]['name']}."}
    return {"kind": f"{n} is a {e['kind']}.",
            "creator": f"{n} was created by {self.people[e['creator']]['name']}.",
            "year": f"{n} was released in {e['year']}."}


def _names(rng, n, parts, used):
  out = []
  while len(out) < n:
    k = rng.integers(parts[0], parts[1] + 1)
    name = "".join(rng.choice(SYLLABLES, k)).capitalize()
    if name not in used:
      used.add(name)
      out.append(name)
  return out


def generate(seed: int = 0, n_countries=30, n_cities=200, n_orgs=200, n_people=1200,
             n_works=500) -> World:
  """The world for a seed (deterministic)."""
  rng = np.random.default_rng(seed)
  used: set = set()
  cnames = _names(rng, n_countries, (2, 3), used)
  tnames = _names(rng, n_cities, (2, 3), used)
  firsts = _names(rng, max(20, n_people // 8), (2, 2), used)
  lasts = _names(rng, max(40, n_people // 4), (2, 3), used)
  countries = [{"id": f"country-{i}", "name": n, "population": int(rng.integers(100, 90000))}
               for i, n in enumerate(cnames)]
  cities = [{"id": f"city-{i}", "name": n, "country": int(i % n_countries) if i < n_countries
             else int(rng.integers(n_countries)), "founded": int(rng.integers(800, 1900))}
            for i, n in enumerate(tnames)]
  for c_i, c in enumerate(countries):
    c["capital"] = c_i  # city i lies in country i for i < n_countries
  people_names, seen = [], set()
  while len(people_names) < n_people:
    nm = f"{rng.choice(firsts)} {rng.choice(lasts)}"
    if nm not in seen:
      seen.add(nm)
      people_names.append(nm)
  orgs = []
  org_names = set()
  while len(orgs) < n_orgs:
    nm = f"{tnames[rng.integers(n_cities)]} {rng.choice(ORG_SUFFIX)}"
    if nm in org_names:
      continue
    org_names.add(nm)
    orgs.append({"id": f"org-{len(orgs)}", "name": nm, "city": int(rng.integers(n_cities)),
                 "founded": int(rng.integers(1700, 2000)), "founder": int(rng.integers(n_people))})
  years = rng.permutation(np.arange(1850, 1850 + n_people))  # distinct: comparisons are strict
  people = [{"id": f"person-{i}", "name": n, "city": int(rng.integers(n_cities)),
             "born": int(years[i]), "occupation": str(rng.choice(OCCUPATIONS)),
             "employer": int(rng.integers(n_orgs))} for i, n in enumerate(people_names)]
  founded = rng.permutation(np.arange(1700, 1700 + n_orgs))
  for o, y in zip(orgs, founded):
    o["founded"] = int(y)
  works, titles = [], set()
  while len(works) < n_works:
    t = f"The {rng.choice(SYLLABLES).capitalize()}{rng.choice(SYLLABLES)} of {rng.choice(tnames)}"
    if t in titles:
      continue
    titles.add(t)
    works.append({"id": f"work-{len(works)}", "name": t, "kind": str(rng.choice(WORK_KINDS)),
                  "creator": int(rng.integers(n_people)), "year": int(rng.integers(1900, 2020))})
  return World(countries, cities, orgs, people, works)


def _split_of(entity_id: str, seed: int, fractions=(0.8, 0.1)) -> str:
  u = (zlib.crc32(f"{seed}:{entity_id}".encode()) % 10_000) / 10_000
  return "train" if u < fractions[0] else ("dev" if u < fractions[0] + fractions[1] else "test")


def questions(world: World, seed: int = 0):
  """All questions, each with family, answer, oracle hops and its subject entity."""
  W, qs = world, []
  rng = np.random.default_rng(seed + 1)

  def add(family, subject, question, answer, hops, gold):
    qs.append({"family": family, "subject": subject, "question": question,
               "golden_answers": [str(answer)], "hops": hops, "gold_ids": gold})

  city = lambda i: W.cities[i]
  fact = lambda kind, e, rel: [e["name"], W.facts(kind, e)[rel]]
  for p in W.people:
    c = city(p["city"])
    k = W.countries[c["country"]]
    add("single_hop", p["id"], f"Where was {p['name']} born?", c["name"],
        [fact("people", p, "city")], [p["id"]])
    add("bridge", p["id"], f"In which country was {p['name']} born?", k["name"],
        [fact("people", p, "city"), fact("cities", c, "country")], [p["id"], c["id"]])
  for k in W.countries:
    add("single_hop", k["id"], f"What is the capital of {k['name']}?",
        city(k["capital"])["name"], [fact("countries", k, "capital")], [k["id"]])
  for o in W.orgs:
    add("single_hop", o["id"], f"In which year was {o['name']} founded?", o["founded"],
        [fact("orgs", o, "founded")], [o["id"]])
  for w in W.works:
    a = W.people[w["creator"]]
    c = city(a["city"])
    e = W.orgs[a["employer"]]
    add("single_hop", w["id"], f"Who created {w['name']}?", a["name"],
        [fact("works", w, "creator")], [w["id"]])
    add("bridge", w["id"], f"Where was the creator of {w['name']} born?", c["name"],
        [fact("works", w, "creator"), fact("people", a, "city")], [w["id"], a["id"]])
    add("three_hop", w["id"], f"In which country was the creator of {w['name']} born?",
        W.countries[c["country"]]["name"],
        [fact("works", w, "creator"), fact("people", a, "city"),
         fact("cities", c, "country")], [w["id"], a["id"], c["id"]])
    add("three_hop", w["id"] + "/e", f"In which year was the employer of the creator of "
        f"{w['name']} founded?", e["founded"],
        [fact("works", w, "creator"), fact("people", a, "employer"),
         fact("orgs", e, "founded")], [w["id"], a["id"], e["id"]])
  for i in range(0, len(W.people) - 1, 2):
    p1, p2 = W.people[i], W.people[i + 1]
    first = p1 if p1["born"] < p2["born"] else p2
    add("comparison", p1["id"], f"Who was born earlier, {p1['name']} or {p2['name']}?",
        first["name"], [fact("people", p1, "born"), fact("people", p2, "born")],
        [p1["id"], p2["id"]])
  order = rng.permutation(len(qs))
  return [dict(qs[i], id=f"q{n}") for n, i in enumerate(order)]


def split_questions(qs, seed: int = 0, fractions=(0.8, 0.1)):
  """{"train"|"dev"|"test": [...]}, split by subject entity (a subject is in one split):
  `fractions` = (train, dev) shares of the subjects, the rest test."""
  out = {"train": [], "dev": [], "test": []}
  for q in qs:
    out[_split_of(q["subject"].split("/")[0], seed, fractions)].append(q)
  return out


def oracle_steps(q) -> list:
  """The oracle's turns: [("search", think, query), ..., ("answer", think, answer)]."""
  steps, facts = [], []
  for i, (query, fact) in enumerate(q["hops"]):
    need = "I need to find" if i == 0 else f"{facts[-1]} Next I need to find"
    steps.append(("search", f"{need} {query}.", query))
    facts.append(fact)
  steps.append(("answer", " ".join(facts), q["golden_answers"][0]))
  return steps


KEPT_WORDS = frozenset(("The", "of", *ORG_SUFFIX))


def renaming(q, rng, taken=frozenset()) -> dict:
  """{old name: fresh name} for the entities a question names (its hop queries that occur in
  the question text: the subject, both people of a comparison). A fresh name replaces each
  syllable word of the old one by a random word of 2-3 syllables that is not in `taken` (the
  words of the world's names), keeping "The", "of" and organisation suffixes: a name no text
  of the world contains."""
  def word():
    while True:
      w = "".join(rng.choice(SYLLABLES, int(rng.integers(2, 4)))).capitalize()
      if w not in taken:
        return w
  out = {}
  for name, _ in q["hops"]:
    if name in q["question"] and name not in out:
      out[name] = " ".join(w if w in KEPT_WORDS else word() for w in name.split())
  return out


def rename(text: str, names: dict) -> str:
  """`text` with every whole-word occurrence of each key of `names` replaced by its value."""
  if not names:
    return text
  pattern = re.compile(r"(?<!\w)(" + "|".join(
      re.escape(n) for n in sorted(names, key=len, reverse=True)) + r")(?!\w)")
  return pattern.sub(lambda m: names[m.group(1)], text)


def reading_drills(world: World, exclude: set, seed: int = 0, per_passage: int = 2):
  """Reading-comprehension text for LM pretraining: three passages in the retrieval block
  format (one target and two distractors sharing a name part when possible), then one of the
  target's fact sentences restated. Teaches "find the sentence about X in the context and
  copy it", a skill a pretrained base model has; nothing agentic. Plus copy drills (a list of
  names, then the same list again), which make induction-style copying emerge within a few
  hundred steps in these tiny models. Held-out entities are never used."""
  rng = np.random.default_rng(seed + 5)
  kinds = ("countries", "cities", "orgs", "people", "works")
  ents = [(k, e) for k in kinds for e in getattr(world, k) if e["id"] not in exclude]
  by_word = {}
  for i, (_, e) in enumerate(ents):
    for w in e["name"].split():
      by_word.setdefault(w, []).append(i)
  text = {e["id"]: " ".join(world.facts(k, e).values()) for k, e in ents}
  out = []
  for i, (kind, e) in enumerate(ents):
    for _ in range(per_passage):
      pool = [j for w in e["name"].split() for j in by_word[w] if j != i]
      others = list(rng.choice(pool, size=min(2, len(pool)), replace=False)) if pool else []
      while len(others) < 2:
        others.append(int(rng.integers(len(ents))))
      docs = [i] + [int(j) for j in others]
      docs = [docs[j] for j in rng.permutation(3)]
      block = "".join(f'Doc {n + 1}(Title: "{ents[j][1]["name"]}") '
                      f"{text[ents[j][1]['id']]}\n"
                      for n, j in enumerate(docs))
      facts = list(world.facts(kind, e).values())
      out.append(block + facts[int(rng.integers(len(facts)))])
  for _ in range(len(ents) * per_passage // 2):  # copy drills: a list of names, then again
    names = [ents[int(j)][1]["name"] for j in rng.integers(len(ents), size=int(rng.integers(4, 10)))]
    out.append(f"Names: {', '.join(names)}. Again: {', '.join(names)}.")
  return out


def write(world: World, out_dir: str, seed: int = 0, fractions=(0.8, 0.1)) -> dict:
  """Writes corpus.jsonl, {train,dev,test}.jsonl, pretrain.txt (one passage per line) and
  drills.jsonl (reading drills); returns counts."""
  os.makedirs(out_dir, exist_ok=True)
  splits = split_questions(questions(world, seed), seed, fractions)
  held_out = {q["subject"].split("/")[0] for s in ("dev", "test") for q in splits[s]}
  with open(os.path.join(out_dir, "corpus.jsonl"), "w") as f, \
      open(os.path.join(out_dir, "pretrain.txt"), "w") as g:
    for pid, title, text in world.passages():
      f.write(json.dumps({"id": pid, "contents": f'"{title}"\n{text}'}) + "\n")
      if pid not in held_out:
        g.write(f"{text}\n")
  drills = reading_drills(world, held_out, seed)
  with open(os.path.join(out_dir, "drills.jsonl"), "w") as f:
    for d in drills:
      f.write(json.dumps({"text": d}) + "\n")
  counts = {"passages": len(world.passages()), "drills": len(drills)}
  for name, rows in splits.items():
    with open(os.path.join(out_dir, f"{name}.jsonl"), "w") as f:
      for q in rows:
        f.write(json.dumps(q) + "\n")
    counts[name] = len(rows)
  return counts
