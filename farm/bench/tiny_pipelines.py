"""Tiny random-initialised diffusers pipelines, built and saved locally: for the backends' tests and
for ``farm bench backends`` on a machine without model weights (a smoke run of the real code path).

Real checkpoints are gigabytes and come from the Hugging Face hub, which tests never touch. These
builders make pipelines with the same classes and the same on-disk layout (``save_pretrained``)
but a few thousand parameters, so the backends load them through exactly the code the GPU path
uses (``from_pretrained(..., local_files_only=True)``) and run them on a CPU in well under a
second per call. Every builder seeds torch first, so the same call saves the same weights. torch
is imported inside the builders, so the test modules that use them import without it.

The tokenizers are made here too (a byte-level BPE vocabulary of single bytes and a few merges for
CLIP, a word-level one for Wan's T5 encoder, letters for LTX-2's Gemma): a real vocabulary would
have to be downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

CLIP_VOCAB_SIZE = 1000
TEXT_DIM = 32


def _seeded(seed: int):
    import torch

    torch.manual_seed(seed)
    return torch


def _byte_symbols() -> list[str]:
    """The 256 printable stand-ins byte-level BPE uses for the bytes 0..255 (GPT-2's table)."""
    keep = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes, extra = list(keep), 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def write_clip_vocab(folder: Path) -> Path:
    """vocab.json + merges.txt of a byte-level BPE that spells every text letter by letter."""
    folder.mkdir(parents=True, exist_ok=True)
    tokens = ["<|startoftext|>", "<|endoftext|>"]
    for symbol in _byte_symbols():
        tokens += [symbol, symbol + "</w>"]
    # A few merges so the BPE model has some; the spelling of a prompt does not matter to a random model.
    merges = ["t h", "th e</w>", "a n", "i n", "e r</w>"]
    tokens += [m.replace(" ", "") for m in merges]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return folder


def _clip_tokenizer():
    import tempfile

    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as scratch:
        folder = write_clip_vocab(Path(scratch))
        # from_pretrained reads vocab.json + merges.txt the same way in transformers 4 and 5
        return CLIPTokenizer.from_pretrained(str(folder), model_max_length=77, local_files_only=True)


def _clip_text_encoder():
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
            hidden_size=TEXT_DIM,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            vocab_size=CLIP_VOCAB_SIZE,
            max_position_embeddings=77,
            layer_norm_eps=1e-5,
            projection_dim=TEXT_DIM,
        )
    ).eval()


def build_tiny_sd(folder: Path, *, seed: int = 0) -> Path:
    """A StableDiffusionPipeline: 2-level UNet (8, 32 channels), 2x VAE, 2-layer CLIP text encoder.

    The VAE downsamples by 2 (two blocks), so its scale factor is 2 and sizes go in steps of 4.
    """
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    _seeded(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 32),
        layers_per_block=1,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TEXT_DIM,
        attention_head_dim=4,
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        block_out_channels=(8, 16),
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        layers_per_block=1,
        sample_size=32,
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    tokenizer = _clip_tokenizer()
    pipe = StableDiffusionPipeline(
        unet=unet.eval(),
        vae=vae.eval(),
        text_encoder=_clip_text_encoder(),
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)
    return Path(folder)


def _clip_vision(image_size: int, patch_size: int, *, projection: bool = True):
    from transformers import CLIPVisionConfig, CLIPVisionModel, CLIPVisionModelWithProjection

    model = CLIPVisionModelWithProjection if projection else CLIPVisionModel
    return model(
        CLIPVisionConfig(
            hidden_size=TEXT_DIM,
            projection_dim=TEXT_DIM,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=image_size,
            intermediate_size=37,
            patch_size=patch_size,
        )
    ).eval()


def _image_processor(size: int):
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(crop_size={"height": size, "width": size}, size={"shortest_edge": size})


def build_tiny_svd(folder: Path, *, seed: int = 0) -> Path:
    """A StableVideoDiffusionPipeline: spatio-temporal UNet (32, 64 channels: its GroupNorms have 32 groups), temporal-decoder VAE
    (2x), CLIP vision encoder with 32-pixel patches on the 224x224 crops SVD always makes;
    default 4 frames."""
    from diffusers import (
        AutoencoderKLTemporalDecoder,
        EulerDiscreteScheduler,
        StableVideoDiffusionPipeline,
        UNetSpatioTemporalConditionModel,
    )

    _seeded(seed)
    unet = UNetSpatioTemporalConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=16,
        in_channels=8,
        out_channels=4,
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
        cross_attention_dim=TEXT_DIM,
        num_attention_heads=(2, 4),
        num_frames=4,
        projection_class_embeddings_input_dim=3 * 8,
        addition_time_embed_dim=8,
    )
    vae = AutoencoderKLTemporalDecoder(
        block_out_channels=(32, 64),
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        layers_per_block=1,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        interpolation_type="linear",
        num_train_timesteps=1000,
        prediction_type="v_prediction",
        sigma_max=700.0,
        sigma_min=0.002,
        steps_offset=1,
        timestep_spacing="leading",
        timestep_type="continuous",
        trained_betas=None,
        use_karras_sigmas=True,
    )
    pipe = StableVideoDiffusionPipeline(
        vae=vae.eval(),
        image_encoder=_clip_vision(224, 32),
        unet=unet.eval(),
        scheduler=scheduler,
        feature_extractor=_image_processor(224),
    )
    pipe.save_pretrained(folder)
    return Path(folder)


def build_tiny_wan_flf2v(folder: Path, *, seed: int = 0) -> Path:
    """A WanImageToVideoPipeline that takes a first and a last frame (``last_image``): 1-layer
    transformer, 8x spatial / 4x temporal Wan VAE, a tiny UMT5 encoder with a word-level tokenizer."""
    from diffusers import (
        AutoencoderKLWan,
        FlowMatchEulerDiscreteScheduler,
        WanImageToVideoPipeline,
        WanTransformer3DModel,
    )
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

    _seeded(seed)
    words = [
        "<pad>",
        "</s>",
        "<unk>",
        *[
            "a",
            "the",
            "camera",
            "slow",
            "push",
            "in",
            "pull",
            "out",
            "pan",
            "left",
            "right",
            "up",
            "down",
            "static",
            "shot",
            "motion",
        ],
    ]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=64
    )
    text_encoder = UMT5EncoderModel(
        UMT5Config(
            vocab_size=64,
            d_model=TEXT_DIM,
            d_kv=8,
            d_ff=37,
            num_layers=1,
            num_heads=4,
            relative_attention_num_buckets=8,
            pad_token_id=0,
            eos_token_id=1,
            decoder_start_token_id=0,
        )
    ).eval()
    vae = AutoencoderKLWan(
        base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    ).eval()
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=36,
        out_channels=16,
        text_dim=TEXT_DIM,
        freq_dim=32,
        ffn_dim=32,
        num_layers=1,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
        image_dim=TEXT_DIM,
        pos_embed_seq_len=2 * (16 + 1),  # FLF2V: both frames' CLIP tokens (16 patches + CLS) get a learned position
    ).eval()
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    pipe = WanImageToVideoPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        scheduler=scheduler,
        image_processor=_image_processor(32),
        image_encoder=_clip_vision(32, 8, projection=False),
        transformer=transformer,
    )
    pipe.save_pretrained(folder)
    return Path(folder)


def build_tiny_ip_adapter(folder: Path, sd_folder: Path, *, seed: int = 0) -> Path:
    """An IP-adapter for the pipeline saved at ``sd_folder`` (by ``build_tiny_sd``), laid out like
    the published ones: ``<folder>/models/ip-adapter.safetensors`` (an ``image_proj`` projection of
    the CLIP image embedding to 4 tokens, and ``to_k_ip``/``to_v_ip`` for every cross-attention of
    the UNet, numbered 1, 3, 5, ... in the UNet's processor order) and ``models/image_encoder``."""
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file

    torch = _seeded(seed)
    unet = UNet2DConditionModel.from_pretrained(str(Path(sd_folder) / "unet"), local_files_only=True)
    channels, cross = list(unet.config.block_out_channels), unet.config.cross_attention_dim
    tensors = {
        "image_proj.proj.weight": torch.randn(4 * cross, TEXT_DIM) * 0.1,
        "image_proj.proj.bias": torch.zeros(4 * cross),
        "image_proj.norm.weight": torch.ones(cross),
        "image_proj.norm.bias": torch.zeros(cross),
    }
    key = 1
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        block = int(name.split(".")[1]) if not name.startswith("mid_block") else -1
        hidden = (
            channels[-1]
            if block < 0
            else list(reversed(channels))[block]
            if name.startswith("up_blocks")
            else channels[block]
        )
        tensors[f"ip_adapter.{key}.to_k_ip.weight"] = torch.randn(hidden, cross) * 0.3
        tensors[f"ip_adapter.{key}.to_v_ip.weight"] = torch.randn(hidden, cross) * 0.3
        key += 2
    models = Path(folder) / "models"
    models.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(models / "ip-adapter.safetensors"))
    _clip_vision(224, 32).save_pretrained(str(models / "image_encoder"))
    return Path(folder)


def build_tiny_ltx2_i2v(folder: Path, *, seed: int = 0) -> Path:
    """An LTX2ImageToVideoPipeline (a video and its sound from an image and a prompt), sized after
    diffusers' dummy LTX-2 components: a 2-layer audio-video transformer, a video VAE halving space
    and time (clips of 2k+1 frames; LTX-2's makes 8k+1), an audio VAE of 8 mel bins at 16 kHz, hop
    160, a vocoder making 240 samples a mel frame (6 x 5 x 8: 24 kHz, as LTX-2's), text connectors,
    and a 2-layer Gemma 3 text encoder (with the tiny vision tower its class requires) reading a
    Gemma byte-pair tokenizer over the printable ASCII letters and "▁" (anything else ``<unk>``)."""
    from diffusers import (
        AutoencoderKLLTX2Audio,
        AutoencoderKLLTX2Video,
        FlowMatchEulerDiscreteScheduler,
        LTX2ImageToVideoPipeline,
        LTX2VideoTransformer3DModel,
    )
    from diffusers.pipelines.ltx2 import LTX2TextConnectors
    from diffusers.pipelines.ltx2.vocoder import LTX2Vocoder
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3TextConfig,
        GemmaTokenizer,
        SiglipVisionConfig,
    )

    _seeded(seed)
    letters = ["▁", *(chr(c) for c in range(ord("!"), ord("~") + 1))]
    vocab = {t: i for i, t in enumerate(["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", *letters])}
    tokenizer = GemmaTokenizer(vocab=vocab, merges=[], model_max_length=1024)
    text = Gemma3TextConfig(
        vocab_size=len(tokenizer),
        hidden_size=TEXT_DIM,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=8,
        max_position_embeddings=1024,
        sliding_window=64,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    vision = SiglipVisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=28, patch_size=14
    )
    text_encoder = Gemma3ForConditionalGeneration(
        Gemma3Config(text_config=text.to_dict(), vision_config=vision.to_dict(), mm_tokens_per_image=4)
    ).eval()
    connectors = LTX2TextConnectors(  # attention width (heads x head dim): the text encoder's hidden size
        caption_channels=TEXT_DIM,
        text_proj_in_factor=text.num_hidden_layers + 1,  # every hidden state, the embeddings' too
        video_connector_num_attention_heads=4,
        video_connector_attention_head_dim=8,
        video_connector_num_layers=1,
        video_connector_num_learnable_registers=None,
        audio_connector_num_attention_heads=4,
        audio_connector_attention_head_dim=8,
        audio_connector_num_layers=1,
        audio_connector_num_learnable_registers=None,
        connector_rope_base_seq_len=32,
        rope_theta=10000.0,
        rope_double_precision=False,
        causal_temporal_positioning=False,
        rope_type="split",
    ).eval()
    transformer = LTX2VideoTransformer3DModel(
        in_channels=4,
        out_channels=4,
        patch_size=1,
        patch_size_t=1,
        num_attention_heads=2,
        attention_head_dim=8,
        cross_attention_dim=16,
        audio_in_channels=4,
        audio_out_channels=4,
        audio_num_attention_heads=2,
        audio_attention_head_dim=4,
        audio_cross_attention_dim=8,
        num_layers=2,
        qk_norm="rms_norm_across_heads",
        caption_channels=TEXT_DIM,
        rope_double_precision=False,
        rope_type="split",
    ).eval()
    vae = AutoencoderKLLTX2Video(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(8,),
        decoder_block_out_channels=(8,),
        layers_per_block=(1,),
        decoder_layers_per_block=(1, 1),
        spatio_temporal_scaling=(True,),
        decoder_spatio_temporal_scaling=(True,),
        decoder_inject_noise=(False, False),
        downsample_type=("spatial",),
        upsample_residual=(False,),
        upsample_factor=(1,),
        timestep_conditioning=False,
        patch_size=1,
        patch_size_t=1,
        encoder_causal=True,
        decoder_causal=False,
    ).eval()
    audio_vae = AutoencoderKLLTX2Audio(
        base_channels=4,
        output_channels=2,
        ch_mult=(1,),
        num_res_blocks=1,
        attn_resolutions=None,
        in_channels=2,
        resolution=32,
        latent_channels=2,
        norm_type="pixel",
        causality_axis="height",
        dropout=0.0,
        mid_block_add_attention=False,
        sample_rate=16000,
        mel_hop_length=160,
        is_causal=True,
        mel_bins=8,
    ).eval()
    vocoder = LTX2Vocoder(
        in_channels=2 * 8,  # the audio VAE's output channels x mel bins
        hidden_channels=32,
        out_channels=2,
        upsample_kernel_sizes=[12, 10, 16],
        upsample_factors=[6, 5, 8],  # 240 samples a mel frame: 100 frames a second -> 24 kHz
        resnet_kernel_sizes=[3],
        resnet_dilations=[[1, 3, 5]],
        leaky_relu_negative_slope=0.1,
        output_sampling_rate=24000,
    ).eval()
    pipe = LTX2ImageToVideoPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        audio_vae=audio_vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        connectors=connectors,
        transformer=transformer,
        vocoder=vocoder,
    )
    pipe.save_pretrained(folder)
    return Path(folder)
