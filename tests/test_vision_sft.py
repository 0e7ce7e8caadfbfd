"""End to end on CPU: two real SFTTrainer steps on tiny vision-language models (random weights, built from configs)
with `templatekit.VisionCollator` as the data collator.

* Qwen2.5-VL and Idefics3, where TRL's native route is exact (`check_processor`): the collator's losses equal those
  of TRL's own route (`patch_processor` + `SFTConfig(assistant_only_loss=True)`), step for step.
* Idefics2, where TRL's native route trains image tokens: the collator's run trains exactly the assistant's text.

In every run the first step's loss is recomputed by hand from the batch the collator gave: the mean cross entropy
over exactly the tokens whose labels are set, which decode to the assistant's replies."""

from __future__ import annotations

import copy
import random

import datasets as datasets  # noqa: E402
import pytest
import torch as torch  # noqa: E402
import vision_offline  # noqa: E402

import templatekit  # noqa: E402
from templatekit.errors import ProcessorRouteError  # noqa: E402

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPLIES = ["It is picture {i}, mostly noise.", "Noise, picture {i}."]


def dataset(rows: int = 4):
    """TRL's vision shape: string messages and an `images` column (TRL places the images in the first user turn)."""
    rng = random.Random(0)
    data = []
    for i in range(rows):
        messages = [
            {"role": "user", "content": f"Describe picture {i}."},
            {"role": "assistant", "content": REPLIES[i % 2].format(i=i)},
            {"role": "user", "content": "Thanks!"},
            {"role": "assistant", "content": "You are welcome."},
        ]
        data.append({"messages": messages, "images": [vision_offline.random_image(rng) for _ in range(1 + i % 2)]})
    return datasets.Dataset.from_list(data)


class Recording:
    """The collator, keeping each batch it gives the trainer."""

    def __init__(self, collator) -> None:
        self.collator, self.batches = collator, []

    def __call__(self, examples):
        batch = self.collator(examples)
        self.batches.append({key: value.clone() if hasattr(value, "clone") else value for key, value in batch.items()})
        return batch


def train(name: str, *, native: bool, tmp_path):
    """Two steps; returns the losses, the model as it was before them, and (collator route) the batches."""
    from trl import SFTConfig, SFTTrainer

    proc = vision_offline.processor(name, fresh=True)
    model = vision_offline.tiny_model(name, proc)
    initial = copy.deepcopy(model)
    args = SFTConfig(
        output_dir=str(tmp_path / ("native" if native else "collator")),
        max_steps=2,
        per_device_train_batch_size=2,
        learning_rate=1e-3,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        seed=0,
        use_cpu=True,
        assistant_only_loss=native,
        remove_unused_columns=False,
    )
    collator = None if native else Recording(templatekit.VisionCollator(proc))
    if native:
        templatekit.patch_processor(proc)
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset(), processing_class=proc, data_collator=collator)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return losses, initial, proc, collator


def check_first_step(losses, initial, proc, collator) -> None:
    """Step 1's loss is the mean cross entropy over exactly the labelled tokens, and they are the replies."""
    batch = collator.batches[0]
    labels = batch["labels"]
    with torch.no_grad():
        logits = initial(**{key: value for key, value in batch.items() if key != "labels"}).logits
    expected = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1), ignore_index=-100
    )
    assert losses[0] == pytest.approx(expected.item(), rel=1e-5)
    masker = collator.collator.masker
    for row in labels.tolist():
        trained = masker.describe([token for token in row if token != -100], quoted=False)
        assert "You are welcome." in trained and "Describe" not in trained and "Thanks" not in trained
        assert not any(token in masker.media.ids for token in row if token != -100)


@pytest.mark.parametrize("name", ["qwen2_5_vl", "idefics3"])
def test_collator_loss_equals_trls_native_route(name: str, tmp_path) -> None:
    native, _, _, _ = train(name, native=True, tmp_path=tmp_path)
    collated, initial, proc, collator = train(name, native=False, tmp_path=tmp_path)
    assert len(native) == len(collated) == 2
    assert collated == pytest.approx(native, rel=1e-6)
    check_first_step(collated, initial, proc, collator)


def test_collator_trains_idefics2_exactly_where_trls_route_is_refused(tmp_path) -> None:
    with pytest.raises(ProcessorRouteError):
        templatekit.patch_processor(vision_offline.processor("idefics2", fresh=True))
    losses, initial, proc, collator = train("idefics2", native=False, tmp_path=tmp_path)
    assert len(losses) == 2
    check_first_step(losses, initial, proc, collator)
