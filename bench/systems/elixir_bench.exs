# Elixir/OTP's side of the benchmark: an optional extra row, run by bench/run.py only
# when `elixir` is on PATH.
#
#     elixir bench/systems/elixir_bench.exs --row a --n 20000 --warmup 2000 --out result.json
#
# The same work as the Python systems, with Elixir's own GenServer, DynamicSupervisor,
# Supervisor and Registry; timed with :erlang.monotonic_time. BEAM runs one scheduler
# per core, so unlike the Python systems it may use both cores of the machine. Crash
# reports are off (the :logger primary level is :none), as for every system.

defmodule Bench.Echo do
  use GenServer
  def init(arg), do: {:ok, arg}
  def handle_call(request, _from, state), do: {:reply, request, state}
end

defmodule Bench.Counter do
  use GenServer
  def init(_arg), do: {:ok, 0}
  def handle_cast(n, count), do: {:noreply, count + n}
  def handle_call(:get, _from, count), do: {:reply, count, count}
end

defmodule Bench.Worker do
  use GenServer
  def start_link(ident), do: GenServer.start_link(__MODULE__, ident)
  def init(ident), do: {:ok, ident}
end

defmodule Bench.Victim do
  use GenServer
  def start_link(_arg), do: GenServer.start_link(__MODULE__, nil, name: :victim)
  def init(_arg), do: {:ok, nil}
  def handle_call(request, _from, state), do: {:reply, request, state}
  def handle_cast(:crash, _state), do: raise("crash")
end

defmodule Bench do
  @page_size 4096

  def now, do: :erlang.monotonic_time(:nanosecond)
  def secs(t0, t1), do: (t1 - t0) / 1.0e9

  def rss do
    [_size, resident | _] = File.read!("/proc/self/statm") |> String.split()
    String.to_integer(resident) * @page_size
  end

  def settle, do: :erlang.garbage_collect()

  def median(values) do
    sorted = Enum.sort(values)
    len = length(sorted)
    mid = div(len, 2)

    if rem(len, 2) == 1,
      do: Enum.at(sorted, mid),
      else: (Enum.at(sorted, mid - 1) + Enum.at(sorted, mid)) / 2
  end

  def quantile(values, q) do
    sorted = Enum.sort(values)
    Enum.at(sorted, min(length(sorted) - 1, trunc(q * length(sorted))))
  end

  # Rows a-c reach the server both by pid and by its registered name, each way in two
  # alternated halves of the row, as otpy's side does.
  def row("a", p) do
    {:ok, pid} = GenServer.start_link(Bench.Echo, nil, name: :echo)
    half = div(p.n, 2)
    settle()

    {by_pid, by_name} =
      Enum.reduce(1..2, {0.0, 0.0}, fn _, {tp, tn} ->
        {tp + call_loop(pid, half), tn + call_loop(:echo, half)}
      end)

    GenServer.stop(pid)
    n = 2 * half

    %{
      calls_per_s: n / by_pid,
      us_per_call: by_pid / n * 1.0e6,
      calls_per_s_name: n / by_name,
      us_per_call_name: by_name / n * 1.0e6
    }
  end

  def row("b", p) do
    {:ok, pid} = GenServer.start_link(Bench.Echo, nil, name: :echo)
    half = div(div(p.n, p.clients), 2)
    settle()

    {by_pid, by_name} =
      Enum.reduce(1..2, {0.0, 0.0}, fn _, {tp, tn} ->
        {tp + clients(pid, p.clients, half), tn + clients(:echo, p.clients, half)}
      end)

    GenServer.stop(pid)
    n = 2 * half * p.clients
    %{calls_per_s: n / by_pid, calls_per_s_name: n / by_name}
  end

  def row("c", p) do
    {:ok, pid} = GenServer.start_link(Bench.Counter, nil, name: :counter)
    half = div(p.n, 2)
    settle()

    {by_pid, by_name, count} =
      Enum.reduce(1..2, {0.0, 0.0, 0}, fn _, {tp, tn, expected} ->
        dp = casts(pid, half, expected + half)
        dn = casts(:counter, half, expected + 2 * half)
        {tp + dp, tn + dn, expected + 2 * half}
      end)

    ^count = 4 * half
    GenServer.stop(pid)
    %{casts_per_s: 2 * half / by_pid, casts_per_s_name: 2 * half / by_name}
  end

  def row("d", p) do
    {:ok, sup} = DynamicSupervisor.start_link(strategy: :one_for_one)
    settle()
    rss0 = rss()
    t0 = now()
    Enum.each(1..p.n, fn i -> {:ok, _} = DynamicSupervisor.start_child(sup, {Bench.Worker, i}) end)
    t1 = now()
    settle()
    rss1 = rss()
    t2 = now()
    DynamicSupervisor.stop(sup)
    t3 = now()

    %{
      starts_per_s: p.n / secs(t0, t1),
      stops_per_s: p.n / secs(t2, t3),
      rss_bytes_per_server: (rss1 - rss0) / p.n
    }
  end

  def row("e", p) do
    {:ok, sup} =
      Supervisor.start_link([Bench.Victim], strategy: :one_for_one, max_restarts: 10 * p.n + 10, max_seconds: 1)

    settle()

    samples =
      Enum.map(1..p.n, fn _ ->
        old = Process.whereis(:victim)
        t0 = now()
        GenServer.cast(:victim, :crash)
        poll()
        t1 = now()
        true = Process.whereis(:victim) != old
        secs(t0, t1)
      end)

    Supervisor.stop(sup)

    %{
      restart_us: median(samples) * 1.0e6,
      restart_us_p90: quantile(samples, 0.9) * 1.0e6,
      restart_us_min: Enum.min(samples) * 1.0e6
    }
  end

  def row("f", p) do
    {:ok, reg} = Registry.start_link(keys: :unique, name: Bench.Names)
    names = Enum.map(1..p.n, fn i -> "name-#{i}" end)
    # Flatness: the same names in tables of p.small names each (register, look up,
    # unregister, next slice), so only the size of the table differs.
    slices = Enum.chunk_every(names, p.small)
    settle()

    {reg_s, look_s} =
      Enum.reduce(slices, {0.0, 0.0}, fn part, {r, l} ->
        {dr, dl} = register_lookup(part)
        Enum.each(part, fn name -> Registry.unregister(Bench.Names, name) end)
        {r + dr, l + dl}
      end)

    settle()
    {r, l} = register_lookup(names)
    Supervisor.stop(reg)

    %{
      register_us_small: reg_s / p.n * 1.0e6,
      lookup_us_small: look_s / p.n * 1.0e6,
      register_us: r / p.n * 1.0e6,
      lookup_us: l / p.n * 1.0e6
    }
  end

  defp call_loop(server, n) do
    t0 = now()
    Enum.each(1..n, fn i -> GenServer.call(server, i) end)
    secs(t0, now())
  end

  defp clients(server, clients, per_client) do
    t0 = now()

    1..clients
    |> Enum.map(fn _ -> Task.async(fn -> Enum.each(1..per_client, fn i -> GenServer.call(server, i) end) end) end)
    |> Task.await_many(:infinity)

    secs(t0, now())
  end

  defp casts(server, n, expected) do
    t0 = now()
    Enum.each(1..n, fn _ -> GenServer.cast(server, 1) end)
    ^expected = GenServer.call(server, :get, :infinity)
    secs(t0, now())
  end

  defp poll do
    GenServer.call(:victim, :ping)
  catch
    :exit, _ -> poll()
  end

  defp register_lookup(names) do
    t0 = now()
    Enum.each(names, fn name -> {:ok, _} = Registry.register(Bench.Names, name, nil) end)
    t1 = now()
    Enum.each(names, fn name -> Registry.lookup(Bench.Names, name) end)
    t2 = now()
    {secs(t0, t1), secs(t1, t2)}
  end

  def json(metrics) do
    body = Enum.map_join(metrics, ", ", fn {key, value} -> ~s("#{key}": #{value}) end)
    "{" <> body <> "}"
  end

  def main(argv) do
    {opts, _, _} =
      OptionParser.parse(argv,
        strict: [row: :string, n: :integer, warmup: :integer, clients: :integer, small: :integer, out: :string]
      )

    :logger.set_primary_config(:level, :none)
    # Registry links each registering process to its partition: trap exits so that
    # stopping a row's registry (or supervisor) does not stop this process.
    Process.flag(:trap_exit, true)
    p = %{n: opts[:n], clients: opts[:clients] || 100, small: opts[:small] || 1000}
    warmup = opts[:warmup] || 0
    started = now()

    if warmup > 0 do
      row(opts[:row], %{p | n: warmup, small: min(p.small, warmup)})
    end

    metrics = row(opts[:row], p)

    info =
      ~s({"elixir": "#{System.version()}", "otp": "#{System.otp_release()}", ) <>
        ~s("schedulers": #{System.schedulers_online()}, "wall_s": #{secs(started, now())}})

    result = ~s({"row": "#{opts[:row]}", "n": #{p.n}, "metrics": #{json(metrics)}, "info": #{info}})
    File.write!(opts[:out], result)
  end
end

Bench.main(System.argv())
