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


def sentence(rng: np.random.Generator) -> str:
    words = [rng.choice(SUBJECTS), rng.choice(VERBS), rng.choice(OBJECTS), rng.choice(PLACES)]
    if rng.random() < 0.6:
        words.append(rng.choice(CLAUSES))
    text = " ".join(str(w) for w in words)
    return text[0].upper() + text[1:] + "."


def sentences(count: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [sentence(rng) for _ in range(count)]
