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
    """(id, title, text) for every entity: one passage each."""
    out = []
    for c in self.countries:
      out.append((c["id"], c["name"], f"{c['name']} is a country. Its capital is "
                  f"{self.cities[c['capital']]['name']}. {c['name']} has a population of "
                  f"{c['population']} thousand."))
    for c in self.cities:
      out.append((c["id"], c["name"], f"{c['name']} is a city in "
                  f"{self.countries[c['country']]['name']}. It was founded in {c['founded']}."))
    for o in self.orgs:
      out.append((o["id"], o["name"], f"{o['name']} is an organisation based in "
                  f"{self.cities[o['city']]['name']}. It was founded in {o['founded']} by "
                  f"{self.people[o['founder']]['name']}."))
    for p in self.people:
      out.append((p["id"], p["name"], f"{p['name']} is a {p['occupation']} born in "
                  f"{self.cities[p['city']]['name']} in {p['born']}. {p['name'].split()[-1]} "
                  f"works for {self.orgs[p['employer']]['name']}."))
    for w in self.works:
      out.append((w["id"], w["name"], f"{w['name']} is a {w['kind']} by "
                  f"{self.people[w['creator']]['name']}, released in {w['year']}."))
    return out


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
  for p in W.people:
    c = city(p["city"])
    add("single_hop", p["id"], f"Where was {p['name']} born?", c["name"],
        [[p["name"], f"{p['name']} was born in {c['name']}."]], [p["id"]])
    k = W.countries[c["country"]]
    add("bridge", p["id"], f"In which country was {p['name']} born?", k["name"],
        [[p["name"], f"{p['name']} was born in {c['name']}."],
         [c["name"], f"{c['name']} is in {k['name']}."]], [p["id"], c["id"]])
  for k in W.countries:
    add("single_hop", k["id"], f"What is the capital of {k['name']}?",
        city(k["capital"])["name"], [[k["name"], f"The capital of {k['name']} is "
                                     f"{city(k['capital'])['name']}."]], [k["id"]])
  for o in W.orgs:
    add("single_hop", o["id"], f"In which year was {o['name']} founded?", o["founded"],
        [[o["name"], f"{o['name']} was founded in {o['founded']}."]], [o["id"]])
  for w in W.works:
    a = W.people[w["creator"]]
    c = city(a["city"])
    e = W.orgs[a["employer"]]
    add("single_hop", w["id"], f"Who created {w['name']}?", a["name"],
        [[w["name"], f"{w['name']} was created by {a['name']}."]], [w["id"]])
    add("bridge", w["id"], f"Where was the creator of {w['name']} born?", c["name"],
        [[w["name"], f"{w['name']} was created by {a['name']}."],
         [a["name"], f"{a['name']} was born in {c['name']}."]], [w["id"], a["id"]])
    add("three_hop", w["id"], f"In which country was the creator of {w['name']} born?",
        W.countries[c["country"]]["name"],
        [[w["name"], f"{w['name']} was created by {a['name']}."],
         [a["name"], f"{a['name']} was born in {c['name']}."],
         [c["name"], f"{c['name']} is in {W.countries[c['country']]['name']}."]],
        [w["id"], a["id"], c["id"]])
    add("three_hop", w["id"] + "/e", f"In which year was the employer of the creator of "
        f"{w['name']} founded?", e["founded"],
        [[w["name"], f"{w['name']} was created by {a['name']}."],
         [a["name"], f"{a['name']} works for {e['name']}."],
         [e["name"], f"{e['name']} was founded in {e['founded']}."]], [w["id"], a["id"], e["id"]])
  for i in range(0, len(W.people) - 1, 2):
    p1, p2 = W.people[i], W.people[i + 1]
    first = p1 if p1["born"] < p2["born"] else p2
    add("comparison", p1["id"], f"Who was born earlier, {p1['name']} or {p2['name']}?",
        first["name"], [[p1["name"], f"{p1['name']} was born in {p1['born']}."],
                        [p2["name"], f"{p2['name']} was born in {p2['born']}."]],
        [p1["id"], p2["id"]])
  order = rng.permutation(len(qs))
  return [dict(qs[i], id=f"q{n}") for n, i in enumerate(order)]


def split_questions(qs, seed: int = 0):
  """{"train"|"dev"|"test": [...]}, split by subject entity (a subject is in one split)."""
  out = {"train": [], "dev": [], "test": []}
  for q in qs:
    out[_split_of(q["subject"].split("/")[0], seed)].append(q)
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


def write(world: World, out_dir: str, seed: int = 0) -> dict:
  """Writes corpus.jsonl, {train,dev,test}.jsonl and pretrain.txt; returns counts."""
  os.makedirs(out_dir, exist_ok=True)
  splits = split_questions(questions(world, seed), seed)
  held_out = {q["subject"].split("/")[0] for s in ("dev", "test") for q in splits[s]}
  with open(os.path.join(out_dir, "corpus.jsonl"), "w") as f, \
      open(os.path.join(out_dir, "pretrain.txt"), "w") as g:
    for pid, title, text in world.passages():
      f.write(json.dumps({"id": pid, "contents": f'"{title}"\n{text}'}) + "\n")
      if pid not in held_out:
        g.write(f"{title}. {text}\n")
  counts = {"passages": len(world.passages())}
  for name, rows in splits.items():
    with open(os.path.join(out_dir, f"{name}.jsonl"), "w") as f:
      for q in rows:
        f.write(json.dumps(q) + "\n")
    counts[name] = len(rows)
  return counts
