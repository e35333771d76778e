// Loads a URDF or SDF file with SDFormat (libsdformat, the parser Gazebo uses) and reports, as
// one JSON object on stdout, every error and warning and what the parser made of the file.
//
// A URDF goes through the same URDF-to-SDF conversion Gazebo runs when it spawns a
// robot_description. Warnings come two ways: some are turned into errors here by the ERR
// warnings policy, the rest (the URDF converter's among them) are written to SDFormat's
// console, which this program captures and counts line by line.
//
// Build: g++ -std=c++17 sdformat_check.cpp $(pkg-config --cflags --libs sdformat12)
// Usage: sdformat_check FILE; exit status 0 only when the file loads without any error or
// warning (1: errors or warnings, 2: usage). Poses in the report are x y z roll pitch yaw, as
// SDFormat resolves them: a model's parts relative to the model frame, a world's models,
// frames and lights relative to the world.
// Used by test/test_gazebo_files.py.

#include <sdf/sdf.hh>

#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

namespace {

std::string Quote(const std::string &text) {
  std::string out = "\"";
  for (const char c : text) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char escaped[8];
          std::snprintf(escaped, sizeof(escaped), "\\u%04x", c);
          out += escaped;
        } else {
          out += c;
        }
    }
  }
  return out + "\"";
}

std::string Number(double value) {
  if (value != value) return "null";  // NaN
  if (value > 1e300) return "1e300";
  if (value < -1e300) return "-1e300";
  char text[64];
  std::snprintf(text, sizeof(text), "%.17g", value);
  return text;
}

template <typename T, typename F>
std::string List(const std::vector<T> &items, F &&format) {
  std::string out = "[";
  for (size_t i = 0; i < items.size(); ++i) out += (i ? ", " : "") + format(items[i]);
  return out + "]";
}

std::string JointTypeName(sdf::JointType type) {
  switch (type) {
    case sdf::JointType::BALL: return "ball";
    case sdf::JointType::CONTINUOUS: return "continuous";
    case sdf::JointType::FIXED: return "fixed";
    case sdf::JointType::GEARBOX: return "gearbox";
    case sdf::JointType::PRISMATIC: return "prismatic";
    case sdf::JointType::REVOLUTE: return "revolute";
    case sdf::JointType::REVOLUTE2: return "revolute2";
    case sdf::JointType::SCREW: return "screw";
    case sdf::JointType::UNIVERSAL: return "universal";
    default: return "invalid";
  }
}

// <plugin> children of an element (a model or a world): name, filename and the plugin's XML.
std::string Plugins(const sdf::ElementPtr &parent) {
  std::vector<sdf::ElementPtr> plugins;
  if (parent && parent->HasElement("plugin")) {
    for (auto plugin = parent->GetElement("plugin"); plugin;
         plugin = plugin->GetNextElement("plugin")) {
      plugins.push_back(plugin);
    }
  }
  return List(plugins, [](const sdf::ElementPtr &plugin) {
    return "{\"name\": " + Quote(plugin->Get<std::string>("name")) +
           ", \"filename\": " + Quote(plugin->Get<std::string>("filename")) +
           ", \"xml\": " + Quote(plugin->ToString("")) + "}";
  });
}

std::string Pose(const ignition::math::Pose3d &pose) {
  return "[" + Number(pose.Pos().X()) + ", " + Number(pose.Pos().Y()) + ", " +
         Number(pose.Pos().Z()) + ", " + Number(pose.Rot().Roll()) + ", " +
         Number(pose.Rot().Pitch()) + ", " + Number(pose.Rot().Yaw()) + "]";
}

// Every pose is resolved by SDFormat's own frame semantics: relative to the model frame for
// a model's parts, relative to the world for models, frames and lights of a world.
std::string Resolved(const sdf::SemanticPose &semantic, const std::string &frame,
                     std::vector<std::string> &errors) {
  ignition::math::Pose3d pose;
  for (const sdf::Error &error : semantic.Resolve(pose, frame))
    errors.push_back("[pose] " + error.Message());
  return Pose(pose);
}

std::string GeometryJson(const sdf::Geometry *geometry) {
  if (geometry == nullptr) return "null";
  switch (geometry->Type()) {
    case sdf::GeometryType::BOX: {
      const auto size = geometry->BoxShape()->Size();
      return "{\"type\": \"box\", \"size\": [" + Number(size.X()) + ", " +
             Number(size.Y()) + ", " + Number(size.Z()) + "]}";
    }
    case sdf::GeometryType::CYLINDER:
      return "{\"type\": \"cylinder\", \"radius\": " +
             Number(geometry->CylinderShape()->Radius()) + ", \"length\": " +
             Number(geometry->CylinderShape()->Length()) + "}";
    case sdf::GeometryType::SPHERE:
      return "{\"type\": \"sphere\", \"radius\": " +
             Number(geometry->SphereShape()->Radius()) + "}";
    case sdf::GeometryType::PLANE:
      return "{\"type\": \"plane\"}";
    case sdf::GeometryType::MESH:
      return "{\"type\": \"mesh\", \"uri\": " + Quote(geometry->MeshShape()->Uri()) + "}";
    default:
      return "{\"type\": \"other\"}";
  }
}

template <typename Shape>
std::string ShapeJson(const Shape &shape, std::vector<std::string> &errors) {
  return "{\"name\": " + Quote(shape.Name()) +
         ", \"pose\": " + Resolved(shape.SemanticPose(), "__model__", errors) +
         ", \"geometry\": " + GeometryJson(shape.Geom()) + "}";
}

std::string LinkJson(const sdf::Link &link, std::vector<std::string> &errors) {
  std::vector<std::string> visuals, collisions;
  for (uint64_t i = 0; i < link.VisualCount(); ++i)
    visuals.push_back(ShapeJson(*link.VisualByIndex(i), errors));
  for (uint64_t i = 0; i < link.CollisionCount(); ++i)
    collisions.push_back(ShapeJson(*link.CollisionByIndex(i), errors));
  const auto &inertial = link.Inertial();
  const auto moments = inertial.MassMatrix().PrincipalMoments();
  bool gravity = true;
  if (link.Element() && link.Element()->HasElement("gravity"))
    gravity = link.Element()->Get<bool>("gravity");
  auto raw = [](const std::string &json) { return json; };
  return "{\"name\": " + Quote(link.Name()) +
         ", \"pose\": " + Resolved(link.SemanticPose(), "__model__", errors) +
         ", \"mass\": " + Number(inertial.MassMatrix().Mass()) +
         ", \"principal_moments\": [" + Number(moments.X()) + ", " + Number(moments.Y()) +
         ", " + Number(moments.Z()) + "], \"gravity\": " + (gravity ? "true" : "false") +
         ", \"visuals\": " + List(visuals, raw) + ", \"collisions\": " + List(collisions, raw) +
         "}";
}

std::string JointJson(const sdf::Joint &joint, std::vector<std::string> &errors) {
  std::string out = "{\"name\": " + Quote(joint.Name()) +
                    ", \"type\": " + Quote(JointTypeName(joint.Type())) +
                    ", \"parent\": " + Quote(joint.ParentLinkName()) +
                    ", \"child\": " + Quote(joint.ChildLinkName()) +
                    ", \"pose\": " + Resolved(joint.SemanticPose(), "__model__", errors);
  if (const sdf::JointAxis *axis = joint.Axis(0)) {
    ignition::math::Vector3d xyz;
    for (const sdf::Error &error : axis->ResolveXyz(xyz, "__model__"))
      errors.push_back("[axis] " + error.Message());
    out += ", \"axis\": [" + Number(xyz.X()) + ", " + Number(xyz.Y()) + ", " +
           Number(xyz.Z()) + "], \"lower\": " + Number(axis->Lower()) +
           ", \"upper\": " + Number(axis->Upper()) + ", \"effort\": " +
           Number(axis->Effort()) + ", \"velocity\": " + Number(axis->MaxVelocity());
  }
  return out + "}";
}

std::string ModelJson(const sdf::Model &model, const std::string &parentFrame,
                      std::vector<std::string> &errors) {
  std::vector<std::string> links, joints, models;
  for (uint64_t i = 0; i < model.LinkCount(); ++i)
    links.push_back(LinkJson(*model.LinkByIndex(i), errors));
  for (uint64_t i = 0; i < model.JointCount(); ++i)
    joints.push_back(JointJson(*model.JointByIndex(i), errors));
  for (uint64_t i = 0; i < model.ModelCount(); ++i)
    models.push_back(ModelJson(*model.ModelByIndex(i), "__model__", errors));
  auto raw = [](const std::string &json) { return json; };
  const std::string pose = parentFrame.empty() ? Pose(model.RawPose())
                                               : Resolved(model.SemanticPose(), parentFrame,
                                                          errors);
  return "{\"name\": " + Quote(model.Name()) +
         ", \"static\": " + (model.Static() ? "true" : "false") +
         ", \"pose\": " + pose +
         ", \"canonical_link\": " + Quote(model.CanonicalLinkName()) +
         ", \"links\": " + List(links, raw) + ", \"joints\": " + List(joints, raw) +
         ", \"models\": " + List(models, raw) + ", \"plugins\": " + Plugins(model.Element()) +
         "}";
}

std::string WorldJson(const sdf::World &world, std::vector<std::string> &errors) {
  std::vector<std::string> models, lights, frames;
  for (uint64_t i = 0; i < world.ModelCount(); ++i)
    models.push_back(ModelJson(*world.ModelByIndex(i), "world", errors));
  for (uint64_t i = 0; i < world.LightCount(); ++i) {
    const sdf::Light *light = world.LightByIndex(i);
    lights.push_back("{\"name\": " + Quote(light->Name()) +
                     ", \"pose\": " + Resolved(light->SemanticPose(), "world", errors) + "}");
  }
  for (uint64_t i = 0; i < world.FrameCount(); ++i) {
    const sdf::Frame *frame = world.FrameByIndex(i);
    frames.push_back("{\"name\": " + Quote(frame->Name()) +
                     ", \"pose\": " + Resolved(frame->SemanticPose(), "world", errors) + "}");
  }
  const sdf::Physics *physics = world.PhysicsDefault();
  const auto gravity = world.Gravity();
  auto raw = [](const std::string &json) { return json; };
  return "{\"name\": " + Quote(world.Name()) +
         ", \"max_step_size\": " + Number(physics ? physics->MaxStepSize() : 0.0) +
         ", \"real_time_factor\": " + Number(physics ? physics->RealTimeFactor() : 0.0) +
         ", \"gravity\": [" + Number(gravity.X()) + ", " + Number(gravity.Y()) + ", " +
         Number(gravity.Z()) + "], \"frames\": " + List(frames, raw) +
         ", \"lights\": " + List(lights, raw) + ", \"models\": " + List(models, raw) +
         ", \"plugins\": " + Plugins(world.Element()) + "}";
}

// Console output, split into messages: each starts with a "Label [file:line]" prefix (in
// colour on the message stream), continuation lines belong to the message before.
std::vector<std::pair<std::string, std::string>> Messages(const std::string &text) {
  std::vector<std::pair<std::string, std::string>> messages;
  std::istringstream lines(text);
  for (std::string line; std::getline(lines, line);) {
    std::string plain;  // without ANSI colour codes
    for (size_t i = 0; i < line.size(); ++i) {
      if (line[i] == '\033') {
        while (i < line.size() && line[i] != 'm') ++i;
      } else {
        plain += line[i];
      }
    }
    const size_t bracket = plain.find(" [");
    const std::string label = bracket == std::string::npos ? "" : plain.substr(0, bracket);
    if (label == "Warning" || label == "Error" || label == "Msg" || label == "Dbg") {
      messages.emplace_back(label, plain);
    } else if (!messages.empty()) {
      messages.back().second += "\n" + plain;
    } else if (!plain.empty()) {
      messages.emplace_back("Warning", plain);  // unlabelled output counts as a warning
    }
  }
  return messages;
}

}  // namespace

int main(int argc, char **argv) {
  if (argc != 2) {
    std::cerr << "usage: " << argv[0] << " FILE (.urdf or .sdf)\n";
    return 2;
  }
  // Everything SDFormat writes to its console (sdfwarn, sdferr, sdfmsg) and to its debug log
  // (sdfdbg: what the URDF conversion lumped or dropped) lands here.
  std::ostringstream console, debug;
  sdf::Console::Instance()->SetQuiet(false);
  sdf::Console::Instance()->GetMsgStream().SetStream(&console);
  sdf::Console::Instance()->GetLogStream().SetStream(&debug);
  // For testing this program: a warning through SDFormat's own console, as its parser emits
  // them, must make the check fail.
  if (const char *warning = std::getenv("SDFORMAT_CHECK_EMIT_WARNING")) sdfwarn << warning << "\n";

  sdf::ParserConfig config = sdf::ParserConfig::GlobalConfig();
  config.SetWarningsPolicy(sdf::EnforcementPolicy::ERR);
  config.SetUnrecognizedElementsPolicy(sdf::EnforcementPolicy::ERR);
  sdf::Root root;
  const sdf::Errors errors = root.Load(argv[1], config);

  std::vector<std::string> errorTexts, warningTexts, debugTexts;
  for (const sdf::Error &error : errors) {
    std::string text = "[code " + std::to_string(static_cast<int>(error.Code())) + "] " +
                       error.Message();
    if (error.FilePath()) text += " (" + *error.FilePath();
    if (error.FilePath() && error.LineNumber()) text += ":" + std::to_string(*error.LineNumber());
    if (error.FilePath()) text += ")";
    errorTexts.push_back(text);
  }

  // What the parser made of the file. Describing it resolves every pose and axis, which can
  // still find errors; they count like the loader's.
  std::vector<std::string> worlds;
  for (uint64_t i = 0; i < root.WorldCount(); ++i)
    worlds.push_back(WorldJson(*root.WorldByIndex(i), errorTexts));
  const std::string model = root.Model() ? ModelJson(*root.Model(), "", errorTexts) : "null";
  const std::string converted = root.Element() ? root.Element()->ToString("") : "";

  for (const auto &[label, text] : Messages(console.str())) {
    if (label == "Error") {
      errorTexts.push_back(text);
    } else if (label == "Warning") {
      warningTexts.push_back(text);
    }
  }
  for (const auto &[label, text] : Messages(debug.str())) debugTexts.push_back(text);

  auto raw = [](const std::string &json) { return json; };
  std::cout << "{\"file\": " << Quote(argv[1]) << ",\n \"version\": " << Quote(root.Version())
            << ",\n \"errors\": " << List(errorTexts, Quote)
            << ",\n \"warnings\": " << List(warningTexts, Quote)
            << ",\n \"debug\": " << List(debugTexts, Quote) << ",\n \"model\": " << model
            << ",\n \"worlds\": " << List(worlds, raw) << ",\n \"sdf\": " << Quote(converted)
            << "}\n";
  return errorTexts.empty() && warningTexts.empty() ? 0 : 1;
}
