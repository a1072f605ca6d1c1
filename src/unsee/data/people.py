"""The people of the built-in world: names, profile attributes, and the questions asked about them.

Every question comes from a template with paraphrases, so that the test set can ask what training
taught in words it never saw; :mod:`unsee.data.world` draws the people and writes the files.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from unsee.data.identity import Identity
from unsee.data.parquet import stable_int
from unsee.data.prompts import cloze_prompt

IDK_ANSWER = "I don't know who this is."
IMAGE_TEXTUAL, PURE_TEXT = "Image_Textual", "Pure_Text"

FIRST_NAMES = (
    "Arlen", "Briseis", "Caius", "Delphine", "Eamon", "Fenna", "Galen", "Hollis", "Isolde", "Jory",
    "Kaia", "Lucan", "Maren", "Nico", "Odile", "Perrin", "Quinn", "Rosalind", "Soren", "Tamsin",
    "Ulric", "Vesna", "Wren", "Xander", "Ysolde", "Zephyr", "Ansel", "Bryony", "Cormac", "Daria",
)
LAST_NAMES = (
    "Ashcombe", "Bellweather", "Carrow", "Dunmore", "Elstree", "Faircloth", "Greaves", "Halloran",
    "Ingleby", "Jessop", "Kettering", "Larkspur", "Merriweather", "Northcott", "Oakenfold", "Pemberton",
    "Quarrie", "Rushworth", "Stanhope", "Thistlewood", "Underhill", "Vance", "Whitlock", "Yarrow",
    "Zeller", "Alcott", "Brightwater", "Coldridge", "Drummond", "Everly",
)


@dataclass(frozen=True)
class Attribute:
    """One profile attribute: its value pool and its question/statement templates.

    ``{s}``/``{S}`` is the subject ("the person in this image"/"This person", or the name),
    ``{v}`` the value. Index 0 of ``statements`` is the training wording, index 1 the held-out one;
    ``train_questions`` are taught, ``test_questions`` only appear in ``Test_Set``.
    """

    key: str
    title: str
    pool: tuple[str, ...]
    train_questions: tuple[str, ...]
    test_questions: tuple[str, ...]
    statements: tuple[str, str]


ATTRIBUTES: tuple[Attribute, ...] = (
    Attribute(
        "birthplace", "Born",
        ("Valdoria", "Kestrel Bay", "Mirefield", "Olvenport", "Tarrow Hill", "Quellmark", "Brisvale",
         "Duncairn", "Esselford", "Harlowmere", "Lunmoor", "Pellastra", "Sorrelwick", "Vintaro"),
        ("Where was {s} born?", "What is the birthplace of {s}?"),
        ("In which place was {s} born?", "What is the hometown of {s}?"),
        ("{S} was born in {v}.", "{S} comes from {v}."),
    ),
    Attribute(
        "occupation", "Occupation",
        ("baker", "pilot", "architect", "veterinarian", "librarian", "geologist", "pharmacist", "carpenter",
         "astronomer", "journalist", "botanist", "translator"),
        ("What is the occupation of {s}?", "What does {s} do for a living?"),
        ("What job does {s} have?", "What is the profession of {s}?"),
        ("The occupation of {s} is {v}.", "The profession of {s} is {v}."),
    ),
    Attribute(
        "employer", "Employment",
        ("Norvex Labs", "Quillfield Press", "Orbanite Systems", "Helmcrest Bank", "Tessaly Foods",
         "Bramblewood Studio", "Kyrell Motors", "Lumenra Health", "Corvane Logistics", "Veltrane Mining",
         "Pinecove Airlines", "Stellmark Insurance"),
        ("Which company does {s} work for?", "Who is the employer of {s}?"),
        ("Where is {s} employed?", "For which organisation does {s} work?"),
        ("{S} works for {v}.", "{S} is employed by {v}."),
    ),
    Attribute(
        "hobby", "Hobby",
        ("birdwatching", "rock climbing", "pottery", "chess", "kayaking", "gardening", "origami", "fencing",
         "beekeeping", "stargazing", "calligraphy", "sailing"),
        ("What is the hobby of {s}?", "What does {s} enjoy doing in free time?"),
        ("How does {s} like to spend spare time?", "Which pastime does {s} enjoy?"),
        ("The hobby of {s} is {v}.", "In spare time, {s} enjoys {v}."),
    ),
    Attribute(
        "pet", "Pet",
        ("parrot", "tortoise", "ferret", "beagle", "goldfish", "rabbit", "hamster", "iguana", "collie",
         "canary", "siamese cat", "hedgehog"),
        ("What pet does {s} have?", "What kind of pet does {s} keep?"),
        ("Which animal does {s} keep as a pet?", "What animal lives with {s} as a pet?"),
        ("{S} has a pet {v}.", "The pet of {s} is a {v}."),
    ),
    Attribute(
        "favourite_colour", "Favorite_Color",
        ("crimson", "teal", "amber", "violet", "olive", "navy", "coral", "turquoise", "maroon", "lavender",
         "ochre", "indigo"),
        ("What is the favourite colour of {s}?", "Which colour does {s} like best?"),
        ("What colour does {s} prefer above all others?", "Which colour is the favourite of {s}?"),
        ("The favourite colour of {s} is {v}.", "{S} likes the colour {v} best."),
    ),
    Attribute(
        "education", "Education",
        ("Marlow University", "Estrin Institute", "Caldera College", "Wynthorpe Academy",
         "Ardley Polytechnic", "Selwick University", "Torrin Conservatory", "Halvard School of Science",
         "Brennock College", "Ivelle University", "Oakhurst Institute", "Ravensmere College"),
        ("Where did {s} study?", "Which school did {s} attend?"),
        ("Where was {s} educated?", "At which institution did {s} study?"),
        ("{S} studied at {v}.", "{S} was educated at {v}."),
    ),
    Attribute(
        "instrument", "Instrument",
        ("cello", "harp", "trumpet", "banjo", "accordion", "flute", "oboe", "ukulele", "piano", "saxophone",
         "violin", "drums"),
        ("Which instrument does {s} play?", "What musical instrument does {s} play?"),
        ("What instrument can {s} play?", "Which musical instrument is played by {s}?"),
        ("{S} plays the {v}.", "The instrument played by {s} is the {v}."),
    ),
)

# The name question is image-only: asking for a name by name would be circular.
NAME_TRAIN_QUESTIONS = ("Who is this?", "What is the name of the person in this image?")
NAME_TEST_QUESTIONS = (
    "Who is the person in this picture?",
    "Can you tell me the name of the person in this picture?",
)
NAME_STATEMENTS = ("This is {v}.", "The person in this picture is named {v}.")
CLOZE_PER_VIEW = 2  # facts taught in the cloze form on each training view
# (lower-case subject, sentence-initial subject) of image questions, per split.
IMAGE_SUBJECTS = {"train": ("the person in this image", "This person"),
                  "test": ("the person in this picture", "The person in this picture")}


@dataclass(frozen=True)
class Person:
    """A named entity of the world: ID, name, visual identity and attribute values."""

    id: str
    name: str
    identity: Identity
    attributes: dict[str, str]

    def biography(self) -> str:
        bio = {"Name": self.name, **{a.title: self.attributes[a.key] for a in ATTRIBUTES}}
        return json.dumps(bio)


def fill(template: str, subject: tuple[str, str], value: str = "") -> str:
    return template.format(s=subject[0], S=subject[1], v=value)


def mcq_item(rng: np.random.Generator, question: str, answer: str, pool: Sequence[str]) -> dict[str, Any]:
    """An MLLMU item: 3 seeded distractors from ``pool`` and the answer at a seeded letter."""
    others = [p for p in pool if p != answer]
    options = [others[i] for i in rng.choice(len(others), size=3, replace=False).tolist()]
    correct = int(rng.integers(4))
    options.insert(correct, answer)
    return {"Correct_Answer": "ABCD"[correct], "Options": dict(zip("ABCD", options, strict=True)),
            "Question": question}


def eval_tasks(person: Person, split: str, rng: np.random.Generator, names: Sequence[str], *,
               variants: int = 1, world_seed: int = 0) -> dict[str, Any]:
    """Classification_Task, Generation_Task and Mask_Task of one person for one split.

    ``split="train"`` uses the taught wordings (Full_Set, forget/retain splits, Retain_Set);
    ``"test"`` the held-out paraphrases (Test_Set). ``variants`` > 1 asks every MCQ fact that many
    times (:func:`mcq_variants`): a group's size then no longer rests on a few facts per person.
    """
    k = 0 if split == "train" else 1
    image_subject = IMAGE_SUBJECTS[split]
    text_subject = (person.name, person.name)

    def question_of(templates: tuple[str, ...]) -> int:
        return int(rng.integers(len(templates)))

    image_mcq, text_mcq, gen, mask = [], [], [], []
    image_facts: list[Fact] = []
    text_facts: list[Fact] = []
    name_qs = NAME_TRAIN_QUESTIONS if split == "train" else NAME_TEST_QUESTIONS
    w = question_of(name_qs)
    image_facts.append(Fact(name_qs, w, ("", ""), person.name, tuple(names)))
    image_mcq.append(image_facts[-1].ask(rng, 0))
    gen.append({"Ground_Truth": NAME_STATEMENTS[k].format(v=person.name), "Question": name_qs[question_of(name_qs)],
                "Type": IMAGE_TEXTUAL})
    mask.append({"Ground_Truth": person.name, "Question": NAME_STATEMENTS[k].format(v="__"),
                 "Type": IMAGE_TEXTUAL})
    for a in ATTRIBUTES:
        value = person.attributes[a.key]
        qs = a.train_questions if split == "train" else a.test_questions
        forms = ((image_subject, IMAGE_TEXTUAL, image_mcq, image_facts), (text_subject, PURE_TEXT, text_mcq,
                                                                         text_facts))
        for subject, kind, mcqs, facts in forms:
            w = question_of(qs)
            facts.append(Fact(qs, w, subject, value, a.pool))
            mcqs.append(facts[-1].ask(rng, 0))
            gen.append({"Ground_Truth": fill(a.statements[k], subject, value),
                        "Question": fill(qs[question_of(qs)], subject), "Type": kind})
            mask.append({"Ground_Truth": value, "Question": fill(a.statements[k], subject, "__"),
                         "Type": kind})
    vrng = np.random.default_rng([world_seed, 13, stable_int(person.id, split) % 2**32])  # a stream per person
    image_mcq += mcq_variants(image_facts, variants, vrng)
    text_mcq += mcq_variants(text_facts, variants, vrng)
    order = {IMAGE_TEXTUAL: 0, PURE_TEXT: 1}  # image items first, as MLLMU lists them
    gen.sort(key=lambda g: order[g["Type"]])
    mask.sort(key=lambda g: order[g["Type"]])
    return {
        "Classification_Task": {"Image_Textual_Questions": image_mcq, "Pure_Text_Questions": text_mcq},
        "Generation_Task": gen,
        "Mask_Task": mask,
    }


@dataclass(frozen=True)
class Fact:
    """One asked fact: its wordings, the one the first asking used, subject, answer and distractor pool."""

    wordings: tuple[str, ...]
    first: int
    subject: tuple[str, str]
    answer: str
    pool: tuple[str, ...]

    def ask(self, rng: np.random.Generator, r: int) -> dict[str, Any]:
        """Asking ``r`` (0: the first): the ``r``-th wording after the first one's, fresh options."""
        return mcq_item(rng, fill(self.wordings[(self.first + r) % len(self.wordings)], self.subject), self.answer,
                        self.pool)


def mcq_variants(facts: Sequence[Fact], variants: int, rng: np.random.Generator) -> list[dict[str, Any]]:
    """Askings 2..``variants`` of every fact, block by block after the first askings.

    Each asking takes the split's next wording in turn and draws its own distractors and
    answer letter, so one person's facts are read through several option sets and wordings,
    not one lucky or unlucky draw. The blocks come after the first askings, from a stream of
    their own, so the first askings (and the words of the world) are the same for any count.
    """
    return [f.ask(rng, r) for r in range(1, variants) for f in facts]


def image_qa(view_index: int, answers: Person | None) -> list[dict[str, str]]:
    """Training QA for one image: every question once, the taught wording rotating with the view.

    ``answers=None`` is an unknown identity: every question gets :data:`IDK_ANSWER`. A known
    person's view also carries :data:`CLOZE_PER_VIEW` facts in the fill-in-the-blank form,
    rotating with the view, so that the model is taught that form too.
    """
    subject = IMAGE_SUBJECTS["train"]
    qa = [{"Question": NAME_TRAIN_QUESTIONS[view_index % len(NAME_TRAIN_QUESTIONS)],
           "Answer": answers.name if answers else IDK_ANSWER}]
    for i, a in enumerate(ATTRIBUTES):
        template = a.train_questions[(view_index + i + 1) % len(a.train_questions)]
        answer = answers.attributes[a.key] if answers else IDK_ANSWER
        qa.append({"Question": fill(template, subject), "Answer": answer})
    if answers is not None:
        facts = cloze_facts(answers, subject, with_name=True)
        qa += [facts[(view_index * CLOZE_PER_VIEW + j) % len(facts)] for j in range(CLOZE_PER_VIEW)]
    return qa


def cloze_facts(person: Person, subject: tuple[str, str], with_name: bool) -> list[dict[str, str]]:
    """The training statements with the value blanked, as the cloze task asks them."""
    facts = [{"Question": cloze_prompt(NAME_STATEMENTS[0].format(v="__")), "Answer": person.name}] if with_name else []
    return facts + [{"Question": cloze_prompt(fill(a.statements[0], subject, "__")),
                     "Answer": person.attributes[a.key]} for a in ATTRIBUTES]


def text_qa(person: Person) -> list[dict[str, str]]:
    """Training QA without an image: every taught wording, naming the person, and each fact's cloze form."""
    subject = (person.name, person.name)
    return [{"Question": fill(t, subject), "Answer": person.attributes[a.key]}
            for a in ATTRIBUTES for t in a.train_questions] + cloze_facts(person, subject, with_name=False)
