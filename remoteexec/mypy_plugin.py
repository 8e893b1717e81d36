"""The mypy plugin: every public method of a ``@remote`` class is a ``RemoteMethod``.

mypy does not apply a class decorator's return type, so without help it takes a ``@remote``
class for the plain class, and ``Invoices.due_date(d)`` for a call missing ``self``. With
the plugin (``plugins = ["remoteexec.mypy_plugin"]`` in the mypy configuration) a method
looked up on a ``@remote`` class is a ``RemoteMethod[P, R]``: ``P`` its parameters without
``self``, ``R`` its result (what the coroutine returns, for an ``async`` method), as
``@remote_method`` declares it for every checker. On an instance of the class itself
(``Invoices.__wrapped__()``) the methods stay the plain ones.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from mypy.nodes import (
    ARG_STAR,
    ARG_STAR2,
    Decorator,
    Expression,
    FuncBase,
    OverloadedFuncDef,
    RefExpr,
    TypeInfo,
)
from mypy.plugin import AttributeContext, ClassDefContext, Plugin
from mypy.types import (
    AnyType,
    CallableType,
    Instance,
    Parameters,
    Type,
    TypeOfAny,
    get_proper_type,
)

REMOTE = "remoteexec.remote.remote"
REMOTE_METHOD_DECORATOR = "remoteexec.remote.remote_method"
REMOTE_METHOD = "remoteexec.proxy.RemoteMethod"
#: The key under which a ``@remote`` class is marked in its ``TypeInfo.metadata``.
MARK = "remoteexec"


def _names(expr: Expression, fullname: str) -> bool:
    return isinstance(expr, RefExpr) and expr.fullname == fullname


def _mark_remote(ctx: ClassDefContext) -> None:
    ctx.cls.info.metadata[MARK] = {"remote": True}


def _awaited(typ: Type) -> Type:
    proper = get_proper_type(typ)
    if isinstance(proper, Instance) and proper.type.fullname == "typing.Coroutine":
        return proper.args[2]
    return typ


def _as_remote_method(
    remote_method: TypeInfo, func: FuncBase, signature: Type | None, ctx: AttributeContext
) -> Type:
    """``RemoteMethod[P, R]`` for the method ``func`` looked up on its class (with the
    ``signature`` written in its ``def``, when only ``@remote_method`` decorates it)."""
    typ = get_proper_type(signature or ctx.default_attr_type)
    if isinstance(typ, Instance) and typ.type.fullname == REMOTE_METHOD:
        return typ  # typed by its decorators
    if isinstance(typ, CallableType):
        # On the class, a plain method still takes self; a class or static method does not.
        first = 0 if func.is_static or func.is_class else 1
        params = Parameters(
            typ.arg_types[first:],
            typ.arg_kinds[first:],
            typ.arg_names[first:],
            variables=typ.variables,
        )
        result = _awaited(typ.ret_type) if getattr(func, "is_coroutine", False) else typ.ret_type
    else:  # overloaded, or decorated into something else: its arguments are not checked
        anything = AnyType(TypeOfAny.special_form)
        params = Parameters(
            [anything, anything], [ARG_STAR, ARG_STAR2], [None, None], is_ellipsis_args=True
        )
        result = anything
    return Instance(remote_method, [params, result])


class RemotePlugin(Plugin):
    """Marks ``@remote`` classes, then types the methods looked up on them."""

    def get_class_decorator_hook(self, fullname: str) -> Callable[[ClassDefContext], None] | None:
        return _mark_remote if fullname == REMOTE else None

    def get_class_attribute_hook(self, fullname: str) -> Callable[[AttributeContext], Type] | None:
        owner, _, name = fullname.rpartition(".")
        if name.startswith("_"):  # never a remote method: AttributeError at run time
            return None
        symbol = self.lookup_fully_qualified(owner)
        info = symbol.node if symbol is not None else None
        if not isinstance(info, TypeInfo) or MARK not in info.metadata:
            return None
        member = info.get(name)
        node = member.node if member is not None else None
        signature = None
        if isinstance(node, Decorator) and not node.var.is_property:
            # What @remote_method declares, computed from the signature itself: its overloads
            # take a generic method returning T for an async one, T being any coroutine.
            if all(_names(d, REMOTE_METHOD_DECORATOR) for d in node.original_decorators):
                signature = node.func.type
            node = node.func
        if not isinstance(node, (FuncBase, OverloadedFuncDef)):
            return None  # a class attribute that is not a method: the proxy gives it as is
        # Looked up here, not through the checker: in the package's namespace ``proxy`` is
        # the function ``remoteexec.proxy``, not the module.
        remote_method = self.lookup_fully_qualified(REMOTE_METHOD)
        if remote_method is None or not isinstance(remote_method.node, TypeInfo):
            return None
        return partial(_as_remote_method, remote_method.node, node, signature)


def plugin(version: str) -> type[Plugin]:
    """The entry point mypy calls."""
    return RemotePlugin
