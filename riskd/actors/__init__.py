"""The actor shell: trio tasks that own the core's state and talk by bounded channels.

One :class:`~riskd.actors.market.MarketActor` per market, one
:class:`~riskd.actors.fund.FundActor` and one
:class:`~riskd.actors.wallet.WalletActor` per settlement asset, and the
:class:`~riskd.actors.sequencer.Sequencer` that gives every state-changing
input its place in one total order (see docs/architecture.md).
"""
