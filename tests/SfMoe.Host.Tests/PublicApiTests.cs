using System.Reflection;
using PublicApiGenerator;

namespace SfMoe.Host.Tests;

/// <summary>
/// The public surface is a decision: it is listed in tests/api/*.txt, and this test fails when it changes. To accept
/// a deliberate change, run the tests with SFMOE_ACCEPT_API=1 (it rewrites the files) and commit them with the change.
/// </summary>
public sealed class PublicApiTests
{
    static string ApiDir()
    {
        var dir = AppContext.BaseDirectory;
        while (dir is not null && !File.Exists(Path.Combine(dir, "SfMoe.sln"))) dir = Path.GetDirectoryName(dir);
        return Path.Combine(dir ?? throw new InvalidOperationException("repository root not found"), "tests", "api");
    }

    static void Check(Assembly assembly, string file)
    {
        var api = assembly.GeneratePublicApi(new ApiGeneratorOptions { IncludeAssemblyAttributes = false })
                          .Replace("\r\n", "\n");
        var path = Path.Combine(ApiDir(), file);
        if (Environment.GetEnvironmentVariable("SFMOE_ACCEPT_API") == "1")
        {
            File.WriteAllText(path, api);
            return;
        }
        var expected = File.Exists(path) ? File.ReadAllText(path).Replace("\r\n", "\n") : "";
        if (expected == api) return;
        var received = Path.ChangeExtension(path, ".received.txt");
        File.WriteAllText(received, api);
        var a = expected.Split('\n');
        var b = api.Split('\n');
        var removed = a.Except(b).Take(15).Select(l => "  - " + l.Trim());
        var added = b.Except(a).Take(15).Select(l => "  + " + l.Trim());
        Assert.Fail($"the public API of {assembly.GetName().Name} changed (see {received}); accept a deliberate change with "
                    + $"SFMOE_ACCEPT_API=1:\n{string.Join("\n", removed.Concat(added))}");
    }

    [Fact]
    public void ThePublicSurfaceOfTheHostIsTheCommittedOne() => Check(typeof(SfMoeModel).Assembly, "SfMoe.txt");

    [Fact]
    public void ThePublicSurfaceOfTheCoreIsTheCommittedOne() => Check(typeof(Core.ModelSpec.Spec).Assembly, "SfMoe.Core.txt");

    /// <summary>Every type a public member of the host mentions (parameters, returns, properties, fields, bases,
    /// generic arguments).</summary>
    static IEnumerable<(string Where, Type Type)> Mentioned(Assembly a)
    {
        const BindingFlags flags = BindingFlags.Public | BindingFlags.Instance | BindingFlags.Static | BindingFlags.DeclaredOnly;
        foreach (var t in a.GetExportedTypes())
        {
            if (t.BaseType is { } bt) yield return (t.FullName!, bt);
            foreach (var i in t.GetInterfaces()) yield return (t.FullName!, i);
            foreach (var m in t.GetMembers(flags))
            {
                var where = $"{t.FullName}.{m.Name}";
                switch (m)
                {
                    case MethodBase mb:
                        if (mb.IsPrivate || mb.IsAssembly) break;
                        foreach (var p in mb.GetParameters()) yield return (where, p.ParameterType);
                        if (mb is MethodInfo mi) yield return (where, mi.ReturnType);
                        break;
                    case PropertyInfo p: yield return (where, p.PropertyType); break;
                    case FieldInfo f: yield return (where, f.FieldType); break;
                    case EventInfo e: yield return (where, e.EventHandlerType!); break;
                }
            }
        }
    }

    static IEnumerable<Type> Expand(Type t)
    {
        if (t.HasElementType) { foreach (var x in Expand(t.GetElementType()!)) yield return x; yield break; }
        yield return t;
        if (t.IsGenericType) foreach (var g in t.GetGenericArguments()) foreach (var x in Expand(g)) yield return x;
    }

    [Fact]
    public void NoFSharpTypeAppearsInTheHostsPublicSignatures()
    {
        var fsharp = typeof(Microsoft.FSharp.Core.FSharpOption<>).Assembly;
        var core = typeof(Core.ModelSpec.Spec).Assembly;
        var bad = Mentioned(typeof(SfMoeModel).Assembly)
            .SelectMany(m => Expand(m.Type).Select(t => (m.Where, Type: t)))
            .Where(m => m.Type.Assembly == fsharp || (m.Type.Assembly == core && !typeof(SfMoeException).IsAssignableFrom(m.Type)))
            .Select(m => $"{m.Where}: {m.Type}")
            .Distinct()
            .ToList();
        Assert.True(bad.Count == 0, "F# types in public signatures:\n" + string.Join("\n", bad));
    }
}
