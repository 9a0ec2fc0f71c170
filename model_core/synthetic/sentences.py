"""A built-in sentence generator: simple grammatical English whose vocabulary was chosen to cover
the English phonemes (bilabials, labiodentals, dentals, sibilants, affricates, liquids, glides,
velars, every vowel height and rounding), so that every viseme occurs many times in a corpus."""
from __future__ import annotations

import numpy as np

SUBJECTS = ["the old fisherman", "my brother", "a busy mechanic", "the youngest judge", "our neighbour",
            "the thoughtful teacher", "a shy violinist", "the woman with the umbrella", "every child",
            "the major", "a cheerful baker", "that boy", "the Scottish poet", "his mother", "the usual visitor",
            "a bored zookeeper", "the pilot", "the grumpy gardener", "a giggling girl", "my cousin Ruth", "the quiet engineer", "a hungry wolf"]
VERBS = ["watched", "bought", "measured", "pushed", "borrowed", "fixed", "chose", "joined", "thanked",
         "moved", "found", "weighed", "judged", "painted", "carried", "opened", "avoided", "enjoyed",
         "ignored", "loved", "wrapped", "brought", "thought about", "jumped over", "pulled"]
OBJECTS = ["the heavy box", "a yellow boat", "the beautiful map", "some fresh bread", "a huge pumpkin",
           "the purple vase", "both shoes", "the genuine treasure", "a cheap watch", "the broken fence",
           "a pair of gloves", "the wooden spoon", "the smooth pebble", "a thick book about vision",
           "the orange juice", "a few coins", "the azure pool", "the bamboo chair", "a leather wallet",
           "the ruby ring", "the oily engine", "that awful noise", "the golden goose", "a big bag of grapes"]
PLACES = ["near the bridge", "by the old mill", "after the movie", "before breakfast", "in the garage",
          "under the bed", "at the harbour", "on the beach", "through the window", "with great pleasure",
          "without any fuss", "during the voyage", "behind the theatre", "in the morning fog",
          "around the village", "at the zoo", "over the hedge", "beside the fountain", "in the garden", "at the gate"]
CLAUSES = ["because it was raining", "while we were away", "and then it was over", "so everyone cheered",
           "but nobody saw why", "when the bells began to ring", "as the sun went down",
           "although it was Thursday", "until the shop closed", "and I was amazed"]


# Everyday words beyond the grammar's, for sentences in free word order: names and words with p, b
# and m at the start, inside and at the end, function words, and words of every vowel. No word of
# the lines the demo model is judged on (HELD_OUT_LINES in tests/test_synthetic.py, the test
# sentence among them) is here unless the grammar already had it: that test checks it.
FREE_WORDS = """
Mary Ben Emma Tom Molly Peter Sam Jim Abby Pip Bella Max Mabel Bert Polly
pebble bubble bumble ample crumb thumb lamb limb comb cap nap mop pop top cup pipe soap rope
bump jump lamp camp stamp ramp hump tub cab rib job rub knob web mob club scrub
mom mum palm calm home name game come some room from seem dream team swim warm arm
baby happy apple paper pepper puppy upper supper hobby robin ribbon rabbit cabin number
simple problem remember umbrella campus impulse symbol summer hammer lemon comma camera
big bad bed bit but bath bell boot buy bone boy bin bag ball bean bird board
pen pan pin pet pot pull push park pink pool pear pace pause pick post
man men mat met miss mood moon moss mouse much mug music mild mine moth
and the a of in on at by up it is was as or no yes so if all any
they he she my her his our your them us this that these those
go get got give gave take took make made see saw say said know knew
run ran sit eat ate fly flew draw drew ride rode sing sang think thought
red green white black brown gray gold pale dim warm cool sharp soft fine
dog fox owl cow sheep horse goat duck fish frog bee ant yak zebra
car bus ship train plane bike boat truck van cart
one two three four five six seven eight nine ten twelve twenty hundred
why how what when who which whose because while though unless
very quite rather almost never always often seldom again away here there
thing shoe chair cheese juice judge voice vision measure treasure azure beige
thick thin breathe smooth with the other father mother brother weather feather
yellow orange window shadow hollow pillow follow narrow elbow
ooh oh ah eh uh hey wow okay
""".split()


def sentence(rng: np.random.Generator) -> str:
    words = [rng.choice(SUBJECTS), rng.choice(VERBS), rng.choice(OBJECTS), rng.choice(PLACES)]
    if rng.random() < 0.6:
        words.append(rng.choice(CLAUSES))
    text = " ".join(str(w) for w in words)
    return text[0].upper() + text[1:] + "."


def _vocabulary() -> list[str]:
    grammar = " ".join(SUBJECTS + VERBS + OBJECTS + PLACES + CLAUSES).split()
    return sorted(set(grammar) | set(FREE_WORDS))


VOCABULARY = _vocabulary()


def free_sentence(rng: np.random.Generator) -> str:
    """5-12 words drawn at random, with an occasional comma: no word order a recogniser could
    learn to predict from (trained on the grammar alone, it heard "Bob and Pam" as "the ...")."""
    words = [str(w) for w in rng.choice(VOCABULARY, int(rng.integers(5, 13)))]
    text = " ".join(w + ("," if rng.random() < 0.12 and i < len(words) - 1 else "") for i, w in enumerate(words))
    return text[0].upper() + text[1:] + ("?" if rng.random() < 0.15 else ".")


def sentences(count: int, seed: int, free_share: float = 0.0) -> list[str]:
    """`count` sentences of the grammar; with `free_share` > 0, that share (drawn per sentence) is
    replaced by sentences in free word order. The grammar's draws do not depend on `free_share`,
    so a corpus made without it stays the same."""
    if not 0.0 <= free_share <= 1.0:
        raise ValueError(f"free_share must be between 0 and 1, got {free_share}")
    rng = np.random.default_rng(seed)
    texts = [sentence(rng) for _ in range(count)]
    if free_share > 0.0:
        free = np.random.default_rng([seed, 3])
        texts = [free_sentence(free) if free.random() < free_share else text for text in texts]
    return texts
