"""Training libraries as they are: TRL (`trl.patch_tokenizer`, verified tags for `assistant_only_loss`) and a drop-in
for Unsloth's masking helper (`unsloth.train_on_responses_only`)."""
