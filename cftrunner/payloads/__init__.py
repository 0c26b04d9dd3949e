"""The Prem API's payloads, pure: nothing here sends or receives.

`bodies` what cftrunner sends; `replies` reading the answers to chat, trace and dataset calls;
`finetuning` reading the project tree, snapshots, recommendations, fine-tuning jobs and models."""
