"""Action heads: how a model's outputs become its training loss and its predicted action chunk.

`TokenHead` is OpenVLA's: each action dimension is one of 256 bin tokens of the vocabulary, trained
with next-token cross-entropy and decoded greedily (token by token, or the whole chunk in one pass
over placeholder inputs with `parallel_decoding`, OpenVLA-OFT). `L1Head` is OpenVLA-OFT's continuous
head: the chunk's K*D positions read placeholder inputs, `vla.model.projectors.ActionMLP` maps the
final hidden states there to normalized actions, L1 loss, one forward pass per chunk.

Every head has the same methods: `output` (what the model's forward returns for it: "logits" or
"hidden"), `training_inputs`, `loss`, `validation_loss`, `teacher_forced` and `predict`.
`make_head(layout)` picks the class for `ActionLayout.head`; a new head (flow matching) is a new class
here plus its choice in `vla.config.model.HEADS`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from vla.config.model import ActionLayout
from vla.model.action_tokenizer import ActionTokenizer, unnormalize
from vla.model.layout import (
    IGNORE_INDEX,
    ActionPrediction,
    chunk_span,
    grounding_positions,
    split_prediction,
    stop_at_eos,
)


def label_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[B, L, V]: the logits that predict each text position of a multimodal pass (text token j is
    predicted at multimodal position n_patches + j - 1)."""
    n_patches = logits.shape[1] - labels.shape[1]
    return logits[:, n_patches - 1 : n_patches + labels.shape[1] - 1]


@dataclass
class TeacherForced:
    """A head's prediction of each row's action chunk in a teacher-forced pass (validation)."""

    pred: np.ndarray  # [B, K, D] normalized actions in [-1, 1]
    true: np.ndarray  # [B, K, D]
    valid: np.ndarray  # [B, K] bool: real chunk steps (not padding past the episode's end)
    metrics: dict[str, float]  # the head's own validation metrics (logged as val/<name>)


def with_placeholders(
    input_ids: torch.Tensor, labels: torch.Tensor, n: int, placeholder_id: int
) -> torch.Tensor:
    """`input_ids` with each row's n chunk positions (`chunk_span`) replaced by the placeholder id."""
    return input_ids.scatter(1, chunk_span(labels, n), placeholder_id)


def shift_tokens(
    input_ids: torch.Tensor, where: torch.Tensor, p: float, bins: int, tokenizer: ActionTokenizer
) -> torch.Tensor:
    """Teacher-forcing noise: each input token at `where` ([B, L] bool) moved, with probability `p`, by a
    uniform shift of -bins..bins, kept within the 256 action tokens. Draws from torch's global generator."""
    lo, hi = tokenizer.first_action_token, tokenizer.last_action_token
    hit = where & (torch.rand(input_ids.shape, device=input_ids.device) < p)
    shift = torch.randint(-bins, bins + 1, input_ids.shape, device=input_ids.device)
    return torch.where(hit, (input_ids + shift).clamp(lo, hi), input_ids)


class TokenHead:
    """256-bin action tokens (OpenVLA): inputs, loss and greedy decoding."""

    output = "logits"

    def __init__(self, layout: ActionLayout, tokenizer: ActionTokenizer, placeholder_id: int):
        self.layout = layout
        self.tokenizer = tokenizer
        # The input at every action position of a parallel-decoding model: `<PAD>`, which no prompt
        # contains (every OpenVLA embedding has the row: the 7B pads its vocabulary to 32064).
        self.placeholder_id = placeholder_id

    def _chunk_span(self, labels: torch.Tensor, action_dim: int) -> torch.Tensor:
        """[B, K*D] positions of each row's action chunk (`vla.model.layout.chunk_span`)."""
        return chunk_span(labels, self.layout.chunk_size * action_dim)

    # -- training ------------------------------------------------------------------------------
    def training_inputs(self, input_ids: torch.Tensor, labels: torch.Tensor, action_dim: int) -> torch.Tensor:
        """The ids the model reads: with parallel decoding the chunk's inputs are placeholders (labels
        keep the true tokens), as at prediction, so no action token is predicted from the true ones."""
        if not self.layout.parallel_decoding:
            return input_ids
        return with_placeholders(input_ids, labels, self.layout.chunk_size * action_dim, self.placeholder_id)

    @property
    def needs_model_loss(self) -> bool:
        """Whether `loss` uses the language model's own loss (computed in its forward from the labels)."""
        return not self.layout.grounding

    def loss(
        self,
        out,
        batch: dict[str, torch.Tensor],
        grounding_weight: float = 1.0,
        regression: str = "l1",
        huber_delta: float = 0.1,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The training loss of a model output `out` (logits, and its own loss when `needs_model_loss`),
        and the grounding tokens' mean cross-entropy (None without grounding tokens).

        Without grounding tokens: the language model's own loss, the mean cross-entropy over the labelled
        tokens. With them: per-token cross-entropy with a grounding token weighted `grounding_weight`
        (an action token 1; samples whose episode has no grounding values carry no grounding labels);
        val/loss stays the unweighted mean. (`regression` and `huber_delta` are
        the continuous heads' choice; tokens are always cross-entropy.)"""
        if not self.layout.grounding:
            return out.loss, None
        labels = batch["labels"]
        logits = label_logits(out.logits, labels).float()
        ce = nn.functional.cross_entropy(logits.transpose(1, 2), labels, reduction="none")
        n_actions = self.layout.chunk_size * batch["actions"].shape[-1]
        ground = grounding_positions(labels, self.layout.grounding, n_actions).float()
        weight = (labels != IGNORE_INDEX).float() + (grounding_weight - 1.0) * ground
        loss = (ce * weight).sum() / weight.sum().clamp(min=1e-8)
        return loss, (ce * ground).sum() / ground.sum().clamp(min=1.0)

    def validation_loss(self, out, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The language model's mean cross-entropy over the labelled tokens (grounding and actions)."""
        return out.loss

    def noisy_inputs(
        self, input_ids: torch.Tensor, labels: torch.Tensor, action_dim: int, p: float, bins: int
    ) -> torch.Tensor:
        """Teacher-forcing noise: each labelled action token of the inputs (the chunk's; padded chunk
        steps carry no label) moved, with probability `p`, by a uniform shift of -bins..bins and kept
        within the 256 action tokens; labels unchanged. Draws from torch's global generator."""
        span = self._chunk_span(labels, action_dim)
        chunk = torch.zeros_like(labels, dtype=torch.bool).scatter(1, span, True)
        return shift_tokens(input_ids, chunk & (labels != IGNORE_INDEX), p, bins, self.tokenizer)

    def predicted_ids(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """[B, L] the teacher-forced argmax token at each text position (validation metrics)."""
        return label_logits(logits, labels).argmax(-1)

    def teacher_forced(self, out, batch: dict[str, torch.Tensor], action_dim: int) -> TeacherForced:
        """The chunk a teacher-forced pass predicts, for the validation metrics.

        Each row's K*D action tokens sit right before its `</s>`. Padded chunk steps have IGNORE_INDEX
        labels; their true ids come from the input ids (the repeated last action), and `valid` leaves
        them out. Metrics: `action_token_acc` (exact bins) and, with grounding tokens, `grounding_l1`
        (mean |predicted - true| of the grounding values)."""
        labels = batch["labels"]
        k, d = self.layout.chunk_size, action_dim
        pred = self.predicted_ids(out.logits, labels)
        span = self._chunk_span(labels, d)
        pred_ids = pred.gather(1, span).view(-1, k, d).cpu().numpy()
        true_ids = batch["input_ids"].gather(1, span).view(-1, k, d).cpu().numpy()
        valid = (labels.gather(1, span) != IGNORE_INDEX).view(-1, k, d).all(-1).cpu().numpy()
        metrics = {"action_token_acc": float((pred_ids == true_ids)[valid].mean())}
        if self.layout.grounding:
            ground = grounding_positions(labels, self.layout.grounding, k * d)
            if "grounding" in batch:  # episodes without values are taught the middle bin: not counted
                ground &= torch.isfinite(batch["grounding"]).all(1).to(ground.device)[:, None]
            pred_g, true_g = pred[ground].cpu().numpy(), labels[ground].cpu().numpy()
            error = np.abs(self.tokenizer.decode(pred_g) - self.tokenizer.decode(true_g))
            metrics["grounding_l1"] = float(error.mean()) if error.size else float("nan")
        return TeacherForced(self.tokenizer.decode(pred_ids), self.tokenizer.decode(true_ids), valid, metrics)

    # -- prediction ----------------------------------------------------------------------------
    def _next_token(self, logits: torch.Tensor, constrain: bool) -> torch.Tensor:
        if constrain:
            lo, hi = self.tokenizer.first_action_token, self.tokenizer.last_action_token
            blocked = torch.full_like(logits, float("-inf"))
            blocked[:, lo : hi + 1] = 0.0
            logits = logits + blocked
        return logits.argmax(dim=-1)

    @torch.no_grad()
    def generate(
        self,
        model: nn.Module,
        rows: list[list[int]],
        pixel_values: torch.Tensor,
        n_tokens: int,
        constrain: bool,
        use_cache: bool = True,
        parallel: int = 0,
        proprio: torch.Tensor | None = None,
        read_after: int = 0,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Greedy decoding of `n_tokens` tokens after each row of prompt ids; returns [B, n_tokens].

        `parallel`: the last `parallel` of them (a parallel-decoding model's action chunk) come from one
        pass over placeholder inputs, so none of them depends on another; the tokens before them are
        decoded one at a time, each fed back.
        `read_after`: then feed the last token and this many placeholders (continuing from the KV cache)
        and also return the LLM's final hidden states there, [B, read_after, H] (the l1 head's chunk
        after grounding tokens first).
        """
        embeds, mask, positions = model.prefix_batch(rows, pixel_values, proprio)
        lm = model.language_model
        embed = lm.get_input_embeddings()
        out = lm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=use_cache)

        def feed(new: torch.Tensor, past, hidden: bool = False):
            """Run the LM on `new` input embeddings [B, n, H] after everything before; logits [B, n, V]
            (`hidden`: the final hidden states, `last_hidden_state`) are the output's last n."""
            nonlocal embeds, mask, positions
            run = lm.model if hidden else lm
            n = new.shape[1]
            if mask is not None:
                mask = torch.cat([mask, mask.new_ones(mask.shape[0], n)], dim=1)
                positions = torch.cat(
                    [positions, positions[:, -1:] + torch.arange(1, n + 1, device=new.device)], 1
                )
            if use_cache:
                new_positions = positions[:, -n:] if positions is not None else None
                return run(
                    inputs_embeds=new,
                    attention_mask=mask,
                    position_ids=new_positions,
                    past_key_values=past,
                    use_cache=True,
                )
            embeds = torch.cat([embeds, new], dim=1)
            return run(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=False)

        generated = []
        for step in range(n_tokens - parallel):
            token = self._next_token(out.logits[:, -1].float(), constrain)
            generated.append(token)
            if step < n_tokens - 1:
                out = feed(embed(token[:, None]), out.past_key_values)
        if parallel:
            logits = out.logits[:, -1:]
            if parallel > 1:
                holders = torch.full((len(rows), parallel - 1), self.placeholder_id, device=logits.device)
                out = feed(embed(holders), out.past_key_values)
                logits = torch.cat([logits, out.logits[:, -(parallel - 1) :]], dim=1)
            generated += [self._next_token(logits[:, j].float(), constrain) for j in range(parallel)]
        tokens = torch.stack(generated, dim=1)
        if not read_after:
            return tokens
        holders = torch.full((len(rows), read_after), self.placeholder_id, device=tokens.device)
        new = embed(torch.cat([tokens[:, -1:], holders], dim=1))
        return tokens, feed(new, out.past_key_values, hidden=True).last_hidden_state[:, -read_after:]

    def predict(
        self,
        model: nn.Module,
        rows: list[list[int]],
        prompts: list[list[int]],
        pixel_values: torch.Tensor,
        proprio: torch.Tensor | None,
        stats: dict,
        constrain: bool,
        use_cache: bool = True,
    ) -> ActionPrediction:
        """Greedy decoding of the G grounding and K * D action tokens after each row, split back into
        grounding values and the action chunk (`split_prediction`)."""
        n_dims = len(stats["q01"])
        tokens = self.generate(
            model,
            rows,
            pixel_values,
            self.layout.n_tokens(n_dims),
            constrain,
            use_cache,
            parallel=self.layout.parallel_tokens(n_dims),
            proprio=proprio,
        )
        token_ids = tokens.cpu().numpy().astype(np.int64)
        if not constrain:
            token_ids = stop_at_eos(rows, token_ids, model.language_model.config.eos_token_id)
        return split_prediction(self.tokenizer, token_ids, rows, prompts, stats, self.layout)


class L1Head:
    """Continuous actions (OpenVLA-OFT's L1 regression head): the chunk's K*D positions read
    placeholder inputs; the LLM's final hidden states there, one chunk step's D of them concatenated,
    go through `ActionMLP` to that step's D normalized actions (with `chunk_positions="steps"`, K
    positions, one hidden state per step). Trained with the mean absolute error
    over the real chunk steps; one forward pass predicts the whole chunk, with nothing fed back, so a
    teacher-forced validation pass is exactly what prediction does.

    With grounding (`layout.grounding=G`), either
    - G more placeholder positions come before the chunk's; a second MLP (`grounding_module`) maps their
      hidden states to the G grounding values, an auxiliary target trained with the same loss (weighted
      `grounding_weight`) on the samples that have one (`batch["grounding"]` finite); or
    - with `layout.grounding_tokens_first`, the G values are bin tokens written one at a time before the
      chunk's placeholders (ECoT, then OpenVLA-OFT): cross-entropy on them through the language-model
      head, teacher forced in training (where `noisy_inputs` perturbs them), generated greedily at
      prediction, so the chunk reads the model's own grounding.
    `predict` returns the values as `ActionPrediction.grounding`."""

    output = "hidden"
    needs_model_loss = False

    def __init__(
        self,
        layout: ActionLayout,
        placeholder_id: int,
        module: nn.Module,
        grounding_module: nn.Module | None = None,
        tokenizer: ActionTokenizer | None = None,
    ):
        self.layout = layout
        self.placeholder_id = placeholder_id
        self.module = module  # ActionMLP (or PEFT's modules_to_save wrapper around it)
        if layout.grounding_values and grounding_module is None:
            raise ValueError(
                f"the layout has {layout.grounding} grounding values but the model has no grounding_head"
            )
        if layout.grounding_tokens_first and tokenizer is None:
            raise ValueError("grounding tokens first need the action tokenizer")
        self.grounding_module = grounding_module
        self.tokenizer = tokenizer

    @property
    def n_actions(self) -> int:
        """The chunk's positions, the last of the head's: K*D, or K with `chunk_positions="steps"`."""
        return self.layout.chunk_placeholders

    @property
    def n_positions(self) -> int:
        """Placeholder positions after the prompt (and the grounding tokens): G grounding values
        (unless written as tokens first), then the K*D of the chunk."""
        return self.layout.placeholders

    @property
    def n_grounding_tokens(self) -> int:
        """G when the grounding is written as tokens before the placeholders, else 0."""
        return self.layout.grounding if self.layout.grounding_tokens_first else 0

    def training_inputs(self, input_ids: torch.Tensor, labels: torch.Tensor, action_dim: int) -> torch.Tensor:
        self._check_dim(action_dim)
        return with_placeholders(input_ids, labels, self.n_positions, self.placeholder_id)

    def noisy_inputs(
        self, input_ids: torch.Tensor, labels: torch.Tensor, action_dim: int, p: float, bins: int
    ) -> torch.Tensor:
        """Teacher-forcing noise on the known grounding tokens of the inputs (`shift_tokens`); the chunk
        reads placeholders, so nothing else is perturbed. Only with grounding tokens first."""
        if not self.n_grounding_tokens:
            raise ValueError("the l1 head reads token inputs only with grounding_tokens_first")
        where = grounding_positions(labels, self.n_grounding_tokens, self.n_actions)
        return shift_tokens(input_ids, where, p, bins, self.tokenizer)

    def _check_dim(self, action_dim: int) -> None:
        if action_dim != self.layout.action_dim:
            raise ValueError(
                f"the l1 head predicts {self.layout.action_dim}-dimensional actions; the data or statistics "
                f"key has {action_dim}"
            )

    def actions(self, hidden: torch.Tensor) -> torch.Tensor:
        """[B, K*P, H] hidden states at the chunk's positions (P per step: D, or 1 with
        `chunk_positions="steps"`) -> [B, K, D] normalized actions."""
        k, p = self.layout.chunk_size, self.layout.step_positions
        weight = next(self.module.parameters())
        return self.module(hidden.reshape(hidden.shape[0], k, p * hidden.shape[-1]).to(weight.dtype))

    def grounding(self, hidden: torch.Tensor) -> torch.Tensor:
        """[B, G, H] hidden states at the grounding positions -> [B, G] grounding values (regressed)."""
        if not self.layout.grounding_values:
            return hidden.new_zeros(hidden.shape[0], 0)
        weight = next(self.grounding_module.parameters())
        return self.grounding_module(hidden.reshape(hidden.shape[0], -1).to(weight.dtype))

    def _outputs(self, out, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """([B, G] regressed grounding values ([B, 0] without), [B, K, D] actions) of a teacher-forced
        pass."""
        span = chunk_span(labels, self.n_positions)
        hidden = out.hidden.gather(1, span[..., None].expand(-1, -1, out.hidden.shape[-1]))
        g = self.layout.grounding_values
        return self.grounding(hidden[:, :g]), self.actions(hidden[:, g:])

    def _grounding_logits(self, out, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """With grounding tokens first: the logits [B, G, V] that predict each row's G grounding tokens
        (from the hidden state one position earlier, through the language-model head) and their labels
        [B, G] (IGNORE_INDEX where the episode has no grounding values, unless the dataset teaches it
        the middle bin: `VLADataset.teach_missing_grounding`)."""
        g = self.n_grounding_tokens
        start = chunk_span(labels, self.n_actions)[:, :1] - g
        targets = labels.gather(1, start + torch.arange(g, device=labels.device))
        before = (start - 1 + torch.arange(g, device=labels.device))[..., None]
        hidden = out.hidden.gather(1, before.expand(-1, -1, out.hidden.shape[-1]))
        weight = out.lm_head.weight
        return out.lm_head(hidden.to(weight.dtype)).float(), targets

    def loss(
        self,
        out,
        batch: dict[str, torch.Tensor],
        grounding_weight: float = 1.0,
        regression: str = "l1",
        huber_delta: float = 0.1,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The mean over the real chunk steps and every dimension (normalized units) of |error|
        (`regression="l1"`, OpenVLA-OFT), error^2 ("mse") or the Huber loss with delta
        `huber_delta` ("huber"); with grounding, plus `grounding_weight` times the grounding loss
        (returned second; None without grounding): the same regression's mean over the known grounding
        values, or with grounding tokens first the mean cross-entropy of the known grounding tokens."""
        labels = batch["labels"]
        ground, pred = self._outputs(out, labels)
        real = batch["action_steps"][..., None].expand_as(pred)
        loss = _regression(pred.float(), batch["actions"].float(), real, regression, huber_delta)
        if self.n_grounding_tokens:
            logits, targets = self._grounding_logits(out, labels)
            ce = nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="sum")
            g_loss = ce / (targets != IGNORE_INDEX).sum().clamp(min=1)
            return loss + grounding_weight * g_loss, g_loss
        if not self.layout.grounding:
            return loss, None
        true = batch["grounding"].to(ground.device).float()
        known = torch.isfinite(true)
        g_loss = _regression(ground.float(), true.nan_to_num(0.0), known, regression, huber_delta)
        return loss + grounding_weight * g_loss, g_loss

    def validation_loss(self, out, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The mean L1 error of the actions, whatever the training loss."""
        _, pred = self._outputs(out, batch["labels"])
        real = batch["action_steps"][..., None].expand_as(pred)
        return _regression(pred.float(), batch["actions"].float(), real, "l1", 0.0)

    def teacher_forced(self, out, batch: dict[str, torch.Tensor], action_dim: int) -> TeacherForced:
        """The chunk as `predict` gives it (given the true grounding tokens, when they come first); with
        grounding, `grounding_l1`: the mean |predicted - true| over the known grounding values (NaN when
        the batch has none)."""
        self._check_dim(action_dim)
        ground, pred = self._outputs(out, batch["labels"])
        metrics = {}
        if self.n_grounding_tokens:
            logits, targets = self._grounding_logits(out, batch["labels"])
            known = targets != IGNORE_INDEX
            if "grounding" in batch:  # episodes without values are taught the middle bin: not counted
                known &= torch.isfinite(batch["grounding"]).to(known.device).reshape(known.shape)
            guess = self.tokenizer.decode(logits.argmax(-1)[known].cpu().numpy())
            error = np.abs(guess - self.tokenizer.decode(targets[known].cpu().numpy()))
            metrics["grounding_l1"] = float(error.mean()) if error.size else float("nan")
        elif self.layout.grounding:
            true = batch["grounding"].to(ground.device).float()
            known = torch.isfinite(true)
            error = (ground.detach().float().clamp(-1.0, 1.0) - true.nan_to_num(0.0)).abs()
            metrics["grounding_l1"] = (
                float((error * known).sum() / known.sum()) if known.any() else float("nan")
            )
        return TeacherForced(
            pred.float().clamp(-1.0, 1.0).detach().cpu().numpy(),
            batch["actions"].float().cpu().numpy(),
            batch["action_steps"].cpu().numpy(),
            metrics,
        )

    @torch.no_grad()
    def predict(
        self,
        model: nn.Module,
        rows: list[list[int]],
        prompts: list[list[int]],
        pixel_values: torch.Tensor,
        proprio: torch.Tensor | None,
        stats: dict,
        constrain: bool = False,
        use_cache: bool = True,
    ) -> ActionPrediction:
        """One forward pass over each row's prompt followed by the G + K*D placeholders; with grounding
        tokens first, the G tokens are decoded greedily (constrained to the action bins, KV cache) and
        the pass reads them before the K*D placeholders."""
        self._check_dim(len(stats["q01"]))
        n, g = self.n_positions, self.layout.grounding_values
        grounding = None
        if self.n_grounding_tokens:  # decoded one at a time, then the placeholders from the KV cache
            decoder = TokenHead(self.layout, self.tokenizer, self.placeholder_id)
            written, hidden = decoder.generate(
                model, rows, pixel_values, self.n_grounding_tokens, True, use_cache, proprio=proprio,
                read_after=n,
            )  # fmt: skip
            grounding = self.tokenizer.decode(written.cpu().numpy().astype(np.int64))
        else:
            holders = [[*row, *([self.placeholder_id] * n)] for row in rows]
            embeds, mask, positions = model.prefix_batch(holders, pixel_values, proprio)
            hidden = model.language_model.model(
                inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=False
            ).last_hidden_state[:, -n:]
        normalized = self.actions(hidden[:, g:]).float().clamp(-1.0, 1.0).cpu().numpy().astype(np.float64)
        if grounding is None:
            grounding = (
                self.grounding(hidden[:, :g]).float().clamp(-1.0, 1.0).cpu().numpy().astype(np.float64)
            )
        return ActionPrediction(unnormalize(normalized, stats), normalized, None, prompts, rows, grounding)


def _regression(
    pred: torch.Tensor, true: torch.Tensor, weight: torch.Tensor, regression: str, huber_delta: float
) -> torch.Tensor:
    """The `weight`ed (0/1, same shape) mean of the per-value loss: |error| ("l1"), error^2 ("mse") or
    the Huber loss with delta `huber_delta` ("huber")."""
    if regression == "l1":
        per = (pred - true).abs()
    elif regression == "mse":
        per = (pred - true).square()
    elif regression == "huber":
        per = nn.functional.huber_loss(pred, true, reduction="none", delta=huber_delta)
    else:
        raise ValueError(f"regression={regression!r}: choose l1, mse or huber")
    weight = weight.to(pred.dtype)
    return (per * weight).sum() / weight.sum().clamp(min=1.0)


def make_head(
    layout: ActionLayout,
    tokenizer: ActionTokenizer,
    placeholder_id: int,
    module: nn.Module | None = None,
    grounding_module: nn.Module | None = None,
) -> TokenHead | L1Head:
    """The head of `layout`; `module` is the model's `action_head` (needed by the continuous heads),
    `grounding_module` its `grounding_head` (a continuous head with grounding)."""
    if layout.head == "tokens":
        return TokenHead(layout, tokenizer, placeholder_id)
    if module is None:
        raise ValueError(
            f"the {layout.head} head needs the model's action_head module, which it does not have"
        )
    return L1Head(layout, placeholder_id, module, grounding_module, tokenizer)
