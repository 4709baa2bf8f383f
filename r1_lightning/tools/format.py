"""The tool-call tag format (Hermes / Qwen2.5's, which their chat templates use; this project's documented format
under text templates): ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``, then the inserted
``<tool_response>...</tool_response>``."""

import re

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
RESPONSE_OPEN, RESPONSE_CLOSE = "<tool_response>", "</tool_response>"
#: one call's markup as written: its JSON is group 1
CALL_PATTERN = re.compile(re.escape(CALL_OPEN) + r"\s*(.*?)\s*" + re.escape(CALL_CLOSE), re.DOTALL)
