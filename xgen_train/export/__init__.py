"""Export and import: the Hugging Face LlamaForCausalLM folder and its tokenizer.json."""
