"""Schema of the `model`, `lora` and `quantization` groups: which OpenVLA, and how it is adapted."""

from __future__ import annotations

from dataclasses import dataclass, field

from vla.config.base import ConfigError, check_choice

LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
ACTION_TOKEN_INITS = ("ordinal", "random")


@dataclass
class TinyArchitecture:
    """Sizes of the tiny model; every field has the meaning of the same field in OpenVLA-7B."""

    image_size: int = 112  # square input (OpenVLA: 224); a multiple of the 14-px patch
    dino_dim: int = 64  # DINOv2-style tower width (OpenVLA: 1024)
    dino_heads: int = 2
    siglip_dim: int = 96  # SigLIP-style tower width (OpenVLA: 1152)
    siglip_heads: int = 3
    vision_depth: int = 3  # blocks per tower; the last one is unused, as in OpenVLA (24 / 27)
    llm_dim: int = 128  # Llama hidden size (OpenVLA: 4096)
    llm_layers: int = 2  # (OpenVLA: 32)
    llm_heads: int = 4  # (OpenVLA: 32)
    llm_intermediate: int = 352  # SwiGLU width, a multiple of 32 for bitsandbytes' CPU kernel


# tokens: OpenVLA's 256-bin action tokens, cross-entropy, greedy decoding (autoregressive or parallel).
# l1: OpenVLA-OFT's continuous head: the chunk's K*D positions read placeholder inputs, an MLP maps the
# LLM's final hidden states there to K x D normalized actions, L1 loss, one forward pass per chunk.
HEADS = ("tokens", "l1")
# Where a continuous head reads its chunk: "dims", one placeholder position per action value (K*D,
# OpenVLA-OFT's layout, its MLP reads a step's D hidden states concatenated); "steps", one position
# per chunk step (K; the MLP maps that one hidden state to the step's D values): a shorter sequence,
# so each training step and each chunk costs less (23-DoF, 5-step chunks: 5 positions instead of 115).
CHUNK_POSITIONS = ("dims", "steps")


@dataclass
class LayoutConfig:
    """The `model.layout` keys: what the model writes after the prompt and how it is decoded
    (`vla.model.layout`). Part of the trained model: saved in its config.json as `action_layout`
    (with the head, the centre crop and the input sizes, `ActionLayout`) and locked when a run is
    reloaded."""

    # K future actions per sample and per query (K*D action positions); 1 is OpenVLA.
    chunk_size: int = 1
    # Grounding values predicted before the actions (vla.data.grounding, ECoT-style): this many per
    # episode, from metadata 'grounding' or a simulator reach scene's balls (8); 0: off (OpenVLA).
    # Token head: G tokens written before the actions. l1 head: G more placeholder positions before the
    # chunk's, whose final hidden states a second MLP (`grounding_head`) maps to the values, trained
    # beside the actions (an auxiliary target). With either head, episodes without grounding targets
    # (the posture tasks beside reach scenes) add no grounding loss; some episode must have them.
    grounding: int = 0
    # Parallel decoding (OpenVLA-OFT): the action chunk's K*D tokens come from one forward pass over
    # placeholder inputs instead of K*D autoregressive steps, so no action token sees the ones before
    # it (in training they are teacher forced, at prediction the model's own, errors and all).
    # Grounding tokens stay autoregressive. (The l1 head always reads placeholders.)
    parallel_decoding: bool = False
    # Decode only the 256 action tokens (OpenVLA decodes freely: a non-action token maps to an extreme
    # bin and `</s>` ends early).
    constrain_decoding: bool = True
    # l1 head only: the G grounding values are written as bin tokens, one at a time (ECoT), and the
    # chunk's placeholders come after them, so the continuous chunk reads where the model said the balls
    # are (ECoT, then OpenVLA-OFT). Cross-entropy on the grounding tokens (weighted data.grounding_weight;
    # data.token_noise perturbs them as inputs), the head's regression loss on the chunk. false: G more
    # placeholder positions regressed in the same pass as the chunk (an auxiliary target).
    grounding_tokens_first: bool = False
    # A continuous head's chunk positions (CHUNK_POSITIONS): "dims" (K*D, OpenVLA-OFT) or "steps" (K).
    # The token head writes one token per value: with model.action_head=tokens the key does not apply
    # (the saved layout says dims), so the tiny model's "steps" needs no change to train tokens.
    chunk_positions: str = "dims"

    def chunk_positions_of(self, head: str) -> str:
        """The chunk positions `head` (a `model.action_head`) trains with: this key for a continuous
        head, "dims" for the token head (one token per value)."""
        return self.chunk_positions if head != "tokens" else "dims"

    def __post_init__(self) -> None:
        check_choice("model.layout.chunk_positions", self.chunk_positions, CHUNK_POSITIONS)
        if self.chunk_size < 1:
            raise ConfigError(
                f"model.layout.chunk_size={self.chunk_size} must be >= 1 (1: one action per step)"
            )
        if self.grounding < 0:
            raise ConfigError(
                f"model.layout.grounding={self.grounding} must be >= 0 (0: no grounding tokens)"
            )
        if self.grounding_tokens_first and not self.grounding:
            raise ConfigError("model.layout.grounding_tokens_first=true needs model.layout.grounding > 0")


@dataclass
class ActionLayout:
    """A model's saved layout: its head, the `model.layout` keys, the centre crop that prediction
    applies to mirror training's random crop (`augment.crop_scale`) and the sizes the head's weights
    are built for. Read from config.json by `vla.model.layout.layout_from_config`; a folder without one
    has OpenVLA's layout."""

    head: str = "tokens"  # HEADS
    chunk_size: int = 1
    grounding: int = 0
    parallel_decoding: bool = False
    constrain_decoding: bool = False  # OpenVLA's own checkpoints decode freely
    center_crop_scale: float = 1.0
    # D of the continuous head's output (its MLP is built for it); 0 for the token head, whose D is the
    # statistics key's.
    action_dim: int = 0
    # S robot-state values projected into one input token after the image patches; 0: no state input.
    proprio_dim: int = 0
    # FiLM (OpenVLA-OFT+): the instruction modulates every vision block (`vla.model.projectors.FiLM`).
    film: bool = False
    grounding_tokens_first: bool = False  # the `model.layout` key (a continuous head only)
    chunk_positions: str = "dims"  # the `model.layout` key (CHUNK_POSITIONS; "steps": a continuous head only)

    def __post_init__(self) -> None:
        check_choice("action_layout.head", self.head, HEADS)
        LayoutConfig.__post_init__(self)  # type: ignore[arg-type]  (the same range checks)
        if not 0.0 < self.center_crop_scale <= 1.0:
            raise ConfigError(f"center_crop_scale={self.center_crop_scale} must be in (0, 1] (1: no crop)")
        if self.action_dim < 0 or self.proprio_dim < 0:
            raise ConfigError(f"action_dim={self.action_dim} and proprio_dim={self.proprio_dim} must be >= 0")
        if self.head == "l1" and self.action_dim < 1:
            raise ConfigError("the l1 head needs action_dim >= 1 (the size of the actions it regresses)")
        if self.grounding_tokens_first and not self.continuous:
            raise ConfigError(
                "grounding_tokens_first=true is for a continuous head (the token head always writes its "
                "grounding tokens first)"
            )
        if self.chunk_positions != "dims" and not self.continuous:
            raise ConfigError(
                f"chunk_positions={self.chunk_positions!r} is for a continuous head (the token head writes "
                "one token per action value: dims)"
            )

    @classmethod
    def of(
        cls, model: ModelConfig, center_crop_scale: float = 1.0, action_dim: int = 0, proprio_dim: int = 0
    ) -> ActionLayout:
        """The layout `model` (the `model` group) trains, for data with `action_dim` action and
        `proprio_dim` state values per step (`model.proprio=false` stores no state input)."""
        layout = model.layout
        return cls(
            head=model.action_head,
            chunk_size=layout.chunk_size,
            grounding=layout.grounding,
            parallel_decoding=layout.parallel_decoding,
            constrain_decoding=layout.constrain_decoding,
            center_crop_scale=center_crop_scale,
            action_dim=action_dim if model.action_head != "tokens" else 0,
            proprio_dim=proprio_dim if model.proprio else 0,
            film=model.film,
            grounding_tokens_first=layout.grounding_tokens_first,
            chunk_positions=layout.chunk_positions_of(model.action_head),
        )

    @property
    def continuous(self) -> bool:
        """Whether the head regresses actions (no action tokens are decoded)."""
        return self.head != "tokens"

    @property
    def step_positions(self) -> int:
        """A continuous head's positions per chunk step: D (chunk_positions="dims") or 1 ("steps"); 0
        for the token head, whose layout stores no D."""
        return 1 if self.chunk_positions == "steps" else self.action_dim

    @property
    def chunk_placeholders(self) -> int:
        """A continuous head's chunk positions: K * D ("dims") or K ("steps"); 0 for the token head."""
        return self.chunk_size * self.step_positions if self.continuous else 0

    @property
    def placeholders(self) -> int:
        """Placeholder inputs a continuous head reads after the prompt (G grounding + its chunk
        positions; the chunk's alone when the grounding is written as tokens first); 0 for the token
        head."""
        if not self.continuous:
            return 0
        return self.chunk_placeholders + (0 if self.grounding_tokens_first else self.grounding)

    @property
    def grounding_values(self) -> int:
        """Grounding values a continuous head regresses in its one pass (its `grounding_head`'s size)."""
        return self.grounding if self.continuous and not self.grounding_tokens_first else 0

    def n_tokens(self, action_dim: int) -> int:
        """Tokens a token-head model writes per query: G grounding + K * D action tokens."""
        return self.grounding + self.chunk_size * action_dim

    def parallel_tokens(self, action_dim: int) -> int:
        """How many of those come from one pass over placeholder inputs: the K * D action tokens with
        parallel decoding, else none (all decoded one at a time)."""
        return self.chunk_size * action_dim if self.parallel_decoding else 0


@dataclass
class ModelConfig:
    """Which OpenVLA to fine-tune."""

    name: str = "openvla_tiny"
    pretrained: str | None = None  # OpenVLA-format folder or hub id; None: a new tiny model
    architecture: TinyArchitecture = field(default_factory=TinyArchitecture)  # only when pretrained=None
    dtype: str = "float32"  # weights of the frozen base: float32 | bfloat16 | float16
    gradient_checkpointing: bool = False  # recompute the LLM's activations in backward (saves memory)
    init_seed: int = 0  # seed of the random tiny model
    # New tiny model: "ordinal" gives the 256 action tokens' embeddings a code in which neighbouring
    # bins are alike (vla.model.tiny.init_action_tokens_ordinal); "random" initialises them as any token.
    action_token_init: str = "ordinal"
    # How actions come out of the LLM (HEADS): tokens (OpenVLA) or l1 (OpenVLA-OFT's continuous head).
    action_head: str = "tokens"
    # Feed the robot state (Isaac `states`/`observations`, pickle `robot_state`, the simulator's 47
    # values), normalized with its own statistics, to the LLM as one projected token after the image.
    proprio: bool = False
    # FiLM (OpenVLA-OFT+): the mean embedding of the prompt's words scales and shifts the features of
    # every vision block, so the image is seen through the instruction (OFT+ added it because its
    # policies ignored the language; so did this project's reach policies: docs/experiments/athena_suite.md).
    film: bool = False
    layout: LayoutConfig = field(default_factory=LayoutConfig)  # the action layout (model.layout.*)

    def __post_init__(self) -> None:
        check_choice("model.dtype", self.dtype, ("float32", "bfloat16", "float16"))
        check_choice("model.action_token_init", self.action_token_init, ACTION_TOKEN_INITS)
        check_choice("model.action_head", self.action_head, HEADS)
        if self.layout.grounding_tokens_first and self.action_head == "tokens":
            raise ConfigError(
                "model.layout.grounding_tokens_first=true is for model.action_head=l1 (the token head always "
                "writes its grounding tokens first)"
            )


@dataclass
class LoraConfig:
    """The adapter: LoRA (DoRA with use_dora), or `full` fine-tuning of every weight."""

    name: str = "humanoid_default"
    kind: str = "lora"  # lora | full
    r: int = 64
    alpha: int = 16
    dropout: float = 0.1
    target_modules: list[str] = field(default_factory=lambda: [*LLAMA_TARGETS, "lm_head"])
    use_dora: bool = False

    def __post_init__(self) -> None:
        check_choice("lora.kind", self.kind, ("lora", "full"))
        if self.kind == "lora" and (self.r < 1 or not self.target_modules):
            raise ConfigError("lora.r must be >= 1 and lora.target_modules non-empty for kind=lora")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"lora.dropout={self.dropout} must be in [0, 1)")


@dataclass
class QuantizationConfig:
    """bitsandbytes quantization of the frozen language model (QLoRA = LoRA + nf4)."""

    name: str = "none"
    method: str | None = None  # None | nf4 | int8

    def __post_init__(self) -> None:
        check_choice("quantization.method", self.method, (None, "nf4", "int8"))
