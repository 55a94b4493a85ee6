"""The improbability drive of character models, at the level of whole *words* (trainer/sample.py's
BatchSampler runs it for character models; word models choose tokens directly, in sample.py).

At a word boundary, when the model starts a word, `WORD_CANDIDATES` candidate words are rolled out from the
stream's state (batched, at a mix of temperatures so the tail is explored), each scored by its probability
under the model: P(word | a word starts here) = P(first letter | a letter comes) · Π P(next letters) ·
P(a non-word character follows). The candidate is chosen from that scored set exactly as a word model's
token is chosen from its vocabulary (seeded within the band [p/(1+t), p·(1+t)], else nearest in log space),
then written letter by letter, and the character after it is forced to end the word. Between words the
model writes as usual at the row's temperature. Each pick is recorded on the stream: (word, P(word)).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from .draws import effective_tolerance, inverse_cdf, mix32, uniform, vocab_mask
from .model import LanguageModel, State, select_state

if TYPE_CHECKING:
    from .sample import Stream, _RowParams

WORD_CANDIDATES = 48  # rollouts per word boundary
MAX_WORD_LETTERS = 20  # a candidate longer than this is dropped
# Rollout temperatures, cycled over the candidates: half at the model's own distribution, the rest
# hotter so that rare words (small targets) turn up among the candidates. Scores are always at T = 1.
ROLLOUT_TEMPERATURES = (1.0, 1.0, 1.5, 2.0)
PRUNE_BELOW_BAND = 100.0  # a rollout whose prefix is this far below the band can no longer matter
APOSTROPHES = ("'", "’")  # inside a word (don't, o’er); a word always starts with a letter


class WordDrive:
    """The drive's per-row state for one sampler over a character model: rows join and leave with the
    sampler's streams, in the same order."""

    def __init__(self, model: LanguageModel, vocab: list[str], device: torch.device):
        self.model = model
        self.vocab = vocab
        self.device = device
        self.letters = vocab_mask(vocab, str.isalpha, device)
        self.word_chars = vocab_mask(vocab, lambda ch: ch.isalpha() or ch in APOSTROPHES, device)
        self.letter_ids = set(torch.nonzero(self.letters).flatten().tolist())
        # Per row: letters of the chosen word still to write, and "the word just ended" (the next
        # character must not extend it, or its scored probability would be a lie).
        self.pending: list[list[int]] = []
        self.end_word: list[bool] = []

    def join(self) -> None:
        self.pending.append([])
        self.end_word.append(False)

    def keep(self, rows: list[int]) -> None:
        self.pending = [self.pending[i] for i in rows]
        self.end_word = [self.end_word[i] for i in rows]

    def step_mask(self, banned: torch.Tensor) -> torch.Tensor | None:
        """`banned` plus, on rows whose driven word just ended, every word character; None if no word ended."""
        if not any(self.end_word):
            return None
        ended = torch.tensor(self.end_word, device=self.device)
        self.end_word = [False] * len(self.end_word)
        return banned | (ended[:, None] & self.word_chars)

    def drive(self, streams: list[Stream], params: _RowParams, state: State, previous: torch.Tensor,
              logits: torch.Tensor, tokens: torch.Tensor, probs: torch.Tensor, model_probs: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows with a target: write pending letters, or choose a whole word where one starts. `state` is the
        model's state after reading `previous` (the last tokens), which gave `logits`."""
        tokens, probs = tokens.tolist(), probs.tolist()
        previous = previous.tolist()
        starting = []
        for row, stream in enumerate(streams):
            if stream.params.improbability <= 0:
                continue
            if self.pending[row]:
                tokens[row] = self.pending[row].pop(0)
                probs[row] = float(model_probs[row, tokens[row]])
                self.end_word[row] = not self.pending[row]
            elif tokens[row] in self.letter_ids and previous[row] not in self.letter_ids:
                starting.append(row)  # the model starts a word here: the drive decides which
        if starting:
            for row, choice in zip(starting, self.choose_words(starting, params, state, logits)):
                if choice is None:  # no usable candidate (very rare): the sampled letter stands
                    continue
                word, letters, probability = choice
                streams[row].picks.append((word, probability))
                tokens[row], self.pending[row] = letters[0], letters[1:]
                probs[row] = float(model_probs[row, letters[0]])
                self.end_word[row] = not self.pending[row]
        return (torch.tensor(tokens, dtype=torch.long, device=self.device),
                torch.tensor(probs, dtype=torch.float32, device=self.device))

    def choose_words(self, rows: list[int], batch: _RowParams, state: State, logits: torch.Tensor
                     ) -> list[tuple[str, list[int], float] | None]:
        """Roll out candidate words for each row (all rows' candidates in one batch), score and choose:
        (word, its letters, P(word)) per row, None where no candidate ended as a word."""
        K, L = WORD_CANDIDATES, MAX_WORD_LETTERS
        index = torch.tensor(rows, dtype=torch.long, device=self.device)
        params = batch.select(index)
        n = len(rows) * K
        owner = torch.arange(len(rows), device=self.device).repeat_interleave(K)
        temps = torch.tensor(ROLLOUT_TEMPERATURES, device=self.device).repeat(K)[:K].repeat(len(rows))
        seeds = mix32(params.seeds ^ 0x5BD1E995)[owner]  # a stream of draws apart from the main one
        # Candidate k of a row draws its letters at counters position·K(L+1) + k(L+1) + j: all distinct.
        candidate = torch.arange(K, device=self.device).repeat(len(rows))
        counters = params.counters[owner] * (K * (L + 1)) + candidate * (L + 1)
        tolerance = effective_tolerance(params.tolerance)
        log_target = params.word_target.double().log()
        prune = (log_target - torch.log1p(tolerance.double()) - math.log(PRUNE_BELOW_BAND))[owner]

        # First letter: the model's distribution given that a letter comes (a word starts here).
        logp = torch.log_softmax(logits[index].float(), 1).masked_fill(~self.letters, -math.inf)
        logp = (logp - logp.logsumexp(1, keepdim=True))[owner]
        char = inverse_cdf(torch.softmax(logp / temps[:, None], 1), uniform(seeds, counters).float())
        score = logp.gather(1, char[:, None]).squeeze(1).double()
        spelled = torch.full((n, L), -1, dtype=torch.long, device=self.device)
        spelled[:, 0] = char
        final = torch.full((n,), math.nan, dtype=torch.float64, device=self.device)
        alive = torch.arange(n, device=self.device)
        # Candidates that share a prefix share its model state, so the rollout steps each distinct prefix
        # (a node of the candidates' trie) once: `nodes` = parent · V + last letter, `node_of` per candidate.
        V = logits.size(1)
        nodes, node_of = torch.unique(owner * V + char, return_inverse=True)
        state = select_state(state, index[nodes // V])
        for j in range(1, L + 1):
            step_logits, state = self.model.step(nodes % V, state)
            step_logits = step_logits.float()
            logp = torch.log_softmax(step_logits, 1)
            end_logp = logp.masked_fill(self.word_chars, -math.inf).logsumexp(1).double()[node_of]
            u = uniform(seeds[alive], counters[alive] + j).float()
            nxt = inverse_cdf(torch.softmax(step_logits[node_of] / temps[alive, None], 1), u)
            ends = ~self.word_chars[nxt]
            final[alive[ends]] = score[ends] + end_logp[ends]
            score = score + logp[node_of, nxt].double()
            go_on = ~ends & (score >= prune[alive])
            if j == L or not bool(go_on.any()):
                break
            spelled[alive[go_on], j] = nxt[go_on]
            alive, score = alive[go_on], score[go_on]
            nodes, node_of = torch.unique(node_of[go_on] * V + nxt[go_on], return_inverse=True)
            state = select_state(state, nodes // V)

        choices = []
        u_choice = uniform(mix32(params.seeds ^ 0x2545F491), params.counters).tolist()
        finals, spelled_rows = final.view(len(rows), K).tolist(), spelled.view(len(rows), K, L).tolist()
        for r in range(len(rows)):
            candidates = {}
            for log_p, ids in zip(finals[r], spelled_rows[r]):
                if not math.isnan(log_p):
                    letters = [c for c in ids if c >= 0]
                    candidates.setdefault("".join(self.vocab[c] for c in letters), (log_p, letters))
            if not candidates:
                choices.append(None)
                continue
            words = sorted(candidates)  # a fixed order, so the seeded pick depends on nothing else
            distance = [abs(candidates[w][0] - float(log_target[r])) for w in words]
            band = [w for w, d in zip(words, distance) if d <= math.log1p(float(tolerance[r])) + 1e-12]
            if band:  # a draw from the model's distribution over the band's words, as for word models
                weights = [math.exp(candidates[w][0]) for w in band]
                x, word = u_choice[r] * sum(weights), band[-1]
                for w, weight in zip(band, weights):
                    if x < weight:
                        word = w
                        break
                    x -= weight
            else:
                word = words[distance.index(min(distance))]
            choices.append((word, candidates[word][1], math.exp(candidates[word][0])))
        return choices
