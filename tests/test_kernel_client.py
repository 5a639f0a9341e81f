"""The grader's kernel client (preprocessors.PromptKernelClient) is ready as soon as a real kernel has answered on
shell and on IOPub, with nothing of the kernel's start left on IOPub for the first cell to read, and it still
reports a kernel that died before answering."""

from __future__ import annotations

import asyncio
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "autograder"))
from preprocessors import PromptKernelClient, PromptKernelManager, ResilientExecute  # noqa: E402

START_SECONDS = 600  # a loaded machine may take long to import ipykernel; nothing here is timed


async def first_cell_messages(code: str) -> tuple[list[dict], str]:
    """Start a kernel, wait until the client is ready, run `code`; returns IOPub's messages up to the cell's idle, and
    the cell's request id."""
    manager = PromptKernelManager(kernel_name="python3")
    await manager.start_kernel()
    client = manager.client()
    client.start_channels()
    try:
        await client.wait_for_ready(timeout=START_SECONDS)
        request = client.execute(code)
        messages = []
        while True:
            message = await client.get_iopub_msg(timeout=START_SECONDS)
            messages.append(message)
            if message["msg_type"] == "status" and message["content"]["execution_state"] == "idle" \
                    and message["parent_header"].get("msg_id") == request:
                return messages, request
    finally:
        client.stop_channels()
        await manager.shutdown_kernel(now=True)


def test_the_grader_executes_with_the_prompt_client():
    manager = ResilientExecute().kernel_manager_class()
    assert isinstance(manager, PromptKernelManager)
    assert manager.client_factory is PromptKernelClient


def test_once_ready_iopub_holds_only_what_the_first_cell_publishes():
    messages, request = asyncio.run(first_cell_messages("print('from the first cell')"))
    # Had the client stopped waiting before its kernel_info's idle status, that status would come first here.
    assert all(message["parent_header"].get("msg_id") == request for message in messages), \
        [(message["msg_type"], message["parent_header"].get("msg_type")) for message in messages]
    printed = "".join(message["content"]["text"] for message in messages if message["msg_type"] == "stream")
    assert printed == "from the first cell\n"


def test_a_kernel_dead_before_it_answers_is_reported():
    async def dead_kernel():
        manager = PromptKernelManager(kernel_name="python3")
        await manager.start_kernel()
        client = manager.client()
        client.start_channels()
        await manager.shutdown_kernel(now=True)  # killed before the client has heard anything from it
        try:
            await client.wait_for_ready(timeout=START_SECONDS)
        finally:
            client.stop_channels()

    with pytest.raises(RuntimeError, match="died"):
        asyncio.run(dead_kernel())
