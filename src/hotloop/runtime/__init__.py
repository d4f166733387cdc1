"""The runtime users write code against: typed tools, ``Agent`` and ``Runner``."""

from hotloop.runtime.agent import Agent
from hotloop.runtime.cache import Cache, MemoryStore, ResultStore
from hotloop.runtime.compaction import Compact
from hotloop.runtime.events import (
    ApprovalRequested,
    FinishedCall,
    MessageFinished,
    MessageStarted,
    ModelTurnFinished,
    ModelWarning,
    PartialRun,
    RunEvent,
    RunFinished,
    RunResult,
    SpeculationRecord,
    StepRecord,
    TextDelta,
    ToolCallFinished,
    ToolCallStarted,
    ToolRecord,
    TurnRetried,
)
from hotloop.runtime.output import OutputValidationError
from hotloop.runtime.policies import (
    Fallback,
    Hedge,
    Policy,
    RetryOnTimeout,
    RouteTurns,
    TurnState,
)
from hotloop.runtime.runner import (
    Approver,
    MaxTurnsExceeded,
    ModelError,
    RunHook,
    Runner,
    TurnTimeout,
)
from hotloop.runtime.scheduler import Admission, CallEffects
from hotloop.runtime.speculation import Speculate
from hotloop.runtime.tools import (
    Effects,
    RunContext,
    Tool,
    ToolArgumentsError,
    ToolDefinitionError,
    tool,
)

__all__ = [
    "Admission",
    "ApprovalRequested",
    "Approver",
    "Agent",
    "Cache",
    "CallEffects",
    "Compact",
    "Effects",
    "Fallback",
    "FinishedCall",
    "Hedge",
    "MaxTurnsExceeded",
    "MemoryStore",
    "ModelError",
    "MessageFinished",
    "MessageStarted",
    "ModelTurnFinished",
    "ModelWarning",
    "OutputValidationError",
    "PartialRun",
    "Policy",
    "ResultStore",
    "RetryOnTimeout",
    "RouteTurns",
    "RunContext",
    "RunEvent",
    "RunFinished",
    "RunHook",
    "RunResult",
    "Runner",
    "SpeculationRecord",
    "Speculate",
    "StepRecord",
    "TextDelta",
    "Tool",
    "ToolArgumentsError",
    "ToolCallFinished",
    "ToolCallStarted",
    "ToolDefinitionError",
    "ToolRecord",
    "TurnRetried",
    "TurnState",
    "TurnTimeout",
    "tool",
]
